"""``python -m benchmarks.batch``: one OpenAI Batch file of text requests over many adapters
(default 1,000 over 20, 128 generated tokens each), through

- ``job``: the batch job (serve_app/jobs/batch.py) submitted with JobSubmissionClient to the app
  (one LLM replica),
- ``http``: a naive client sending the file line by line over HTTP at the same concurrency,
- ``offline``: vLLM's ``LLM.generate`` with ``LoRARequest``s, same engine settings (the ceiling
  for one engine; prompts grouped by adapter),
- ``raydata``: Ray Data's ``ray.data.llm.build_processor`` with a vLLM engine config and per-row
  ``model`` naming the adapter (recorded as the exception if it cannot run here),

and images (``--images`` requests over the demo LoRAs): the batch job against one-by-one HTTP.
Prints throughput, adapter loads (swaps into the replica's working set) and ratios; writes JSON.
"""

import argparse

from benchmarks.batch.run import Setup, main

if __name__ == "__main__":
    d = Setup()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=d.n, help="text requests")
    p.add_argument("--adapters", type=int, default=d.adapters)
    p.add_argument("--max-tokens", type=int, default=d.max_tokens)
    p.add_argument("--concurrency", type=int, help="default: the job's own; HTTP the same")
    p.add_argument("--also", default="", help="the job again at these concurrencies, e.g. 16,32")
    p.add_argument("--images", type=int, default=d.images, help="image requests (0: none)")
    p.add_argument("--paths", default=",".join(d.paths), help="subset of job,http,offline,raydata")
    p.add_argument(
        "--max-ongoing", type=int, help="LLM replica's max_ongoing_requests (and vLLM max_num_seqs)"
    )
    p.add_argument("--max-num-seqs", type=int, help="vLLM max_num_seqs (default: --max-ongoing)")
    p.add_argument("--vary-tokens", action="store_true", help="max_tokens from max/4 to max")
    p.add_argument("--scheduling-policy", choices=["priority", "fcfs"], help="default: app's")
    p.add_argument("--out", default="batch-results.json")
    a = p.parse_args()
    paths = tuple(a.paths.split(","))
    also = tuple(int(c) for c in a.also.split(",") if c)
    setup = Setup(
        a.n,
        a.adapters,
        a.max_tokens,
        a.concurrency,
        a.images,
        paths,
        also,
        a.max_ongoing,
        a.max_num_seqs,
        a.vary_tokens,
        a.scheduling_policy,
    )
    main(setup, a.out)
