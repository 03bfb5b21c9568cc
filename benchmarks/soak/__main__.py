"""``python -m benchmarks.soak``: a bounded soak of the demo app (``configs/demo.yaml``: SmolLM2
on vLLM and on Transformers+PEFT, the tiny Diffusers model), stopping by itself after ``--minutes``.

Open-loop clients send a steady mix at ``--rate`` requests/s: text completions and chat, streamed
and not, over the bases and their adapters, and images with and without LoRAs (more LoRAs than
the image working set holds). Prints per minute: sent / answered / failed and p50 / p99 latency;
every failure with its status and message (so none goes unexplained); and the resident memory
(RSS) of the Serve proxy, the ingress, the registry, each model replica and the vLLM engine
processes, sampled after the warm-up and at every minute's end, with the growth rate in each
half of the run; latency per kind of request. Writes the figures as JSON.
"""

import argparse

from benchmarks.soak.run import Setup, main

if __name__ == "__main__":
    d = Setup()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=d.minutes, help="how long to send (default 10)")
    p.add_argument("--rate", type=float, default=d.rate, help="requests per second")
    p.add_argument("--max-inflight", type=int, default=d.max_inflight, help="client-side cap")
    p.add_argument("--out", default="soak-results.json")
    a = p.parse_args()
    main(Setup(a.minutes, a.rate, a.max_inflight), a.out)
