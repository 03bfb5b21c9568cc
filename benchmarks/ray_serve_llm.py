"""Ray Serve LLM (``ray.serve.llm.build_openai_app``) serving the same model and adapters as
``benchmarks.llm_vs_vllm``'s other servers: one model replica, everything else Ray Serve LLM's
defaults. Runs in the foreground until killed, its own local Ray cluster.

    .venv/bin/python -m benchmarks.ray_serve_llm --port 8000 [--model tiny|smollm2]

Ray Serve LLM loads LoRAs only from cloud storage (``dynamic_lora_loading_path`` must be s3://,
gs://, ...), so the adapters are put on a local S3 server first; a request names one as
``<base>:<adapter>``. On CPU it needs ``accelerator_config: {kind: cpu}`` and a CPU placement
bundle (its default bundle asks for a GPU).
"""

import argparse
import os
import signal
import sys

from benchmarks.s3 import s3_adapters
from benchmarks.text_model import MODELS, text_assets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="tiny", choices=MODELS)
    args = parser.parse_args()
    base, assets = text_assets(args.model)
    # As llm_vs_vllm sets for every server (vLLM CPU otherwise reserves 92% of RAM).
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    # Stopped with SIGTERM: exit through Python, so Ray's atexit stops the cluster it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    import ray
    from ray import serve
    from ray.serve.llm import LLMConfig, build_openai_app

    from benchmarks.llm_vs_vllm import ENGINE

    with s3_adapters(assets["adapters"]) as root:
        # A cluster of its own (address="local"): it runs beside this app's `serve run`.
        # NOTE: 4 logical CPUs: with this 2-core machine's 2, the model deployment took both and
        # its OpenAiIngress ({"CPU": 1}) was never scheduled ("total resources available: {}"),
        # so every request hung at the proxy (what "/v1/models hung" was).
        ray.init(address="local", include_dashboard=False, num_cpus=max(4, os.cpu_count() or 1))
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        config = LLMConfig(
            model_loading_config={"model_id": base, "model_source": assets["base"]},
            lora_config={
                "dynamic_lora_loading_path": root,
                "max_num_adapters_per_replica": ENGINE["max_loras"],
            },
            engine_kwargs={
                "enable_lora": True,
                "dtype": "float32",
                "enforce_eager": True,
                **ENGINE,
            },
            accelerator_config={"kind": "cpu"},
            placement_group_config={"bundles": [{"CPU": 1}]},
            deployment_config={"num_replicas": 1},
        )
        serve.run(build_openai_app({"llm_configs": [config]}), blocking=True)


if __name__ == "__main__":
    main()
