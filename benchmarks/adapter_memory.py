"""Memory stays bounded while cycling through 5x more adapters than fit: the pool evicts with
vLLM's ``remove_lora`` so the weights really leave the engine. Runs the real vLLM CPU engine and
our pool in this process (no Ray), prints RSS (this process + the engine process) per round.

    .venv/bin/python -m benchmarks.adapter_memory [--slots 4] [--factor 5] [--rounds 3]
"""

import argparse
import asyncio
import json
import os
import shutil
import tempfile
from pathlib import Path

import psutil

from adapters.pool import AdapterPool
from adapters.sources import Fetcher
from adapters.spec import AdapterSpec
from adapters.validate import ValidationRules, validate_text_lora
from benchmarks.adapter_copies import make_adapter_copies


def tree_rss_mb() -> float:
    me = psutil.Process()
    procs = [me, *me.children(recursive=True)]
    return sum(p.memory_info().rss for p in procs if p.is_running()) / 2**20


async def run(slots: int, factor: int, rounds: int) -> dict:
    from serve_app.demo.llm_assets import build_llm_assets
    from serve_app.engines.vllm_engine import VLLMEngine

    demo = build_llm_assets(Path(os.environ.get("LORASERVE_DEMO_DIR", ".demo")))
    tmp = Path(tempfile.mkdtemp(prefix="adapter-memory-"))
    copies = make_adapter_copies(demo["adapters"]["pirate"], slots * factor, tmp)
    specs = [AdapterSpec(name=n, source=p, base="tiny-llama") for n, p in copies.items()]
    engine = VLLMEngine(
        name="tiny-llama",
        model=demo["base"],
        max_loras=slots,
        max_cpu_loras=slots,
        max_lora_rank=16,
        dtype="float32",
        engine_kwargs={"enforce_eager": True},
    )
    await engine.start()
    fetcher = Fetcher(allowed_roots=[tmp], cache_dir=tmp / "cache")
    rules = ValidationRules(max_rank=16)

    async def prepare(spec: AdapterSpec):
        path = await fetcher.fetch(spec)
        return validate_text_lora(spec, path, engine.base_info(), rules)

    async def load(spec: AdapterSpec, prepared) -> None:
        await engine.load_adapter(spec.name, str(prepared.path))

    pool = AdapterPool(
        prepare=prepare, load=load, unload=engine.unload_adapter, max_count=slots, name="tiny-llama"
    )

    async def use(spec: AdapterSpec) -> None:
        async with pool.use(spec):
            await engine.completions({"model": spec.name, "prompt": "Hi", "max_tokens": 2})

    for spec in specs[:slots]:  # fill the working set once before the baseline
        await use(spec)
    start = tree_rss_mb()
    print(f"after filling {slots} slots: RSS {start:.0f} MiB", flush=True)
    per_round = []
    for r in range(rounds):
        for spec in specs:
            await use(spec)
        rss = tree_rss_mb()
        per_round.append(rss)
        snap = pool.snapshot()
        print(
            f"round {r + 1}: {len(specs)} adapters cycled, loads {snap['loads']}, evictions "
            f"{snap['evictions']}, engine holds {len(await engine.engine_adapters())}, "
            f"RSS {rss:.0f} MiB",
            flush=True,
        )
    await engine.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)
    return {
        "slots": slots,
        "adapters": len(specs),
        "rss_start_mib": start,
        "rss_rounds_mib": per_round,
        "growth_mib": per_round[-1] - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--factor", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    result = asyncio.run(run(args.slots, args.factor, args.rounds))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
