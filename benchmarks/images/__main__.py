"""``python -m benchmarks.images``: what switching LoRAs costs on one image replica.

Over HTTP against the real app (Ray Serve + Diffusers on the tiny demo pipeline), closed-loop
clients, the same prompts and seeds in every scenario:

- ``single``: every request uses one adapter (the best case for a LoRA server).
- ``alternating``: requests rotate over K adapters, all resident: each pipeline call activates
  a different set (``set_adapters``). Target: throughput >= 0.9 x ``single``.
- ``naive``: the same rotation on a replica whose working set holds ONE LoRA, so every request
  fetches, checks and loads its LoRA and unloads the previous one, as a server without an adapter
  cache would. Reported: ``alternating`` / ``naive`` speedup.

Each scenario runs at every ``--concurrency`` given (1 shows the pure switch cost; more lets
same-adapter requests batch). Prints a table and writes JSON.
"""

import argparse

from benchmarks.images.run import Setup, main

if __name__ == "__main__":
    d = Setup()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=d.requests, help="per scenario")
    p.add_argument("--concurrency", default=",".join(map(str, d.concurrency)))
    p.add_argument("--adapters", type=int, default=d.adapters, help="K adapters to rotate over")
    p.add_argument("--size", type=int, default=d.size, help="image width and height")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument(
        "--lora-rank", type=int, default=d.lora_rank,
        help="0: the demo LoRAs; N: rotate over K generated rank-N LoRAs (bigger files)",
    )  # fmt: skip
    p.add_argument("--out", default="image-switching-results.json")
    a = p.parse_args()
    conc = tuple(int(c) for c in a.concurrency.split(","))
    main(Setup(a.requests, conc, a.adapters, a.size, a.steps, a.lora_rank), a.out)
