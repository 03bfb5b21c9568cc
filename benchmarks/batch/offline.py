"""The offline baselines, each in its own process (``python -m benchmarks.batch.offline``):
vLLM's ``LLM.generate`` with ``LoRARequest``s, and Ray Data's ``build_processor``. Reads the
batch file, prints one JSON line of figures (or the exception that stopped it).

Ray Data's vLLM stage takes adapters only from cloud storage: ``dynamic_lora_loading_path`` must
be an s3://, gs://, abfss:// or azure:// URI (Ray's ``LoraConfig`` validator), and a row's
``model`` is a subfolder there (without it, a Hugging Face id: no hub here). So the adapters are
uploaded to a local S3 server (moto, as the tests use) and Ray's own boto3 download reads them
through ``AWS_ENDPOINT_URL``.
"""

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

from benchmarks.s3 import s3_adapters


def _rows(path: Path) -> list[dict]:
    rows = []
    for raw in path.read_text().splitlines():
        line = json.loads(raw)
        body = line["body"]
        rows.append({"adapter": body["model"].split(":", 1)[1], "prompt": body["prompt"],
                     "max_tokens": body["max_tokens"]})  # fmt: skip
    return rows


def vllm_offline(rows: list[dict], base: str, adapters: dict[str, str], engine: dict) -> dict:
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    t = time.perf_counter()
    llm = LLM(model=base, enable_lora=True, dtype="float32", enforce_eager=True, **engine)
    start = time.perf_counter() - t
    loras = {n: LoRARequest(n, i + 1, p) for i, (n, p) in enumerate(sorted(adapters.items()))}
    rows = sorted(rows, key=lambda r: r["adapter"])  # grouped: the best order for one engine
    params = [
        SamplingParams(temperature=0, max_tokens=r["max_tokens"], ignore_eos=True) for r in rows
    ]
    t = time.perf_counter()
    outs = llm.generate(
        [r["prompt"] for r in rows], params, lora_request=[loras[r["adapter"]] for r in rows]
    )
    wall = time.perf_counter() - t
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"requests": len(rows), "wall_s": wall, "req_per_s": len(rows) / wall,
            "tok_per_s": tokens / wall, "engine_start_s": start}  # fmt: skip


def ray_data(rows: list[dict], base: str, adapters: dict[str, str], engine: dict) -> dict:
    with s3_adapters(adapters) as loras_uri:
        return _ray_data(rows, base, loras_uri, engine)


def _ray_data(rows: list[dict], base: str, loras_uri: str, engine: dict) -> dict:
    import ray
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        config = vLLMEngineProcessorConfig(
            model_source=base,
            engine_kwargs={
                "enable_lora": True,
                "dtype": "float32",
                "enforce_eager": True,
                **engine,
            },  # fmt: skip
            dynamic_lora_loading_path=loras_uri,
            placement_group_config={"bundles": [{"CPU": 1}]},
            chat_template_stage=False,  # rows are plain completions prompts
            concurrency=1,
            batch_size=64,
        )
        processor = build_processor(
            config,
            preprocess=lambda r: {
                "model": r["adapter"],
                "prompt": r["prompt"],
                "sampling_params": {
                    "temperature": 0,
                    "max_tokens": int(r["max_tokens"]),
                    "ignore_eos": True,
                },  # fmt: skip
            },
            postprocess=lambda r: {"n": len(r.get("generated_tokens") or [])},
        )
        # NOTE: each run of a processor starts its own vLLM engine (an actor pool per dataset):
        # a one-row run first measures that start, reported beside the full run's wall.
        t = time.perf_counter()
        processor(ray.data.from_items(rows[:1])).take_all()
        start = time.perf_counter() - t
        t = time.perf_counter()
        out = processor(ray.data.from_items(rows)).take_all()
        wall = time.perf_counter() - t
    finally:
        ray.shutdown()
    tokens = sum(r["n"] for r in out)
    return {"requests": len(rows), "wall_s": wall, "req_per_s": len(rows) / wall,
            "tok_per_s": tokens / wall, "start_s": start,
            "steady_req_per_s": len(rows) / max(wall - start, 1e-9)}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("which", choices=["offline", "raydata"])
    p.add_argument("--trace", type=Path, required=True)
    p.add_argument("--spec", type=Path, required=True, help="JSON: base, adapters, engine")
    a = p.parse_args()
    spec = json.loads(a.spec.read_text())
    run = vllm_offline if a.which == "offline" else ray_data
    try:
        result = run(_rows(a.trace), spec["base"], spec["adapters"], spec["engine"])
    except BaseException as e:  # the figure the benchmark records is the failure itself
        traceback.print_exc()
        result = {"error": f"{type(e).__name__}: {e}"[:2000]}
    sys.stdout.flush()
    print("RESULT " + json.dumps(result), flush=True)
    os._exit(0)  # engine processes and Ray threads must not keep this alive


if __name__ == "__main__":
    main()
