"""The cluster configs pass the validation their tools run: ``cluster.yaml`` and the local fake
multi-node config through Ray's launcher validation, the KubeRay manifest's ``serveConfigV2`` and
the Serve configs through Serve's schema and our own config tree.
NOTE: the private ``ray.autoscaler._private`` imports live here only (tests, not the package).
"""

from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.serve.schema import ServeDeploySchema

from serve_app.config import AppConfig

ROOT = Path(__file__).parents[3]


def _load(rel: str) -> dict:
    return yaml.safe_load((ROOT / rel).read_text())


def test_cluster_yaml_passes_ray_launcher_validation() -> None:
    cfg = prepare_config(_load("cluster.yaml"))
    validate_config(cfg)
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["max_workers"] == 0
    gpus = sorted(t["resources"]["GPU"] for n, t in types.items() if n != cfg["head_node_type"])
    assert gpus[0] == 1 and gpus[-1] > 1  # a one-GPU and a multi-GPU worker type
    workers = [t for n, t in types.items() if n != cfg["head_node_type"]]
    assert all(0 <= t["min_workers"] <= t["max_workers"] for t in workers)
    assert any('.[gpu]"' in c for c in cfg["worker_setup_commands"])
    assert any("serve deploy" in c for c in cfg["head_start_ray_commands"])


def test_cluster_yaml_deploys_a_valid_serve_config() -> None:
    cmds = _load("cluster.yaml")["head_start_ray_commands"]
    deploy = next(c for c in cmds if "serve deploy" in c)
    path = deploy.split(":-", 1)[1].split("}", 1)[0]
    _check_serve_config(_load(path))


def test_local_fake_multinode_config_is_complete_and_valid() -> None:
    cfg = _load("deploy/cluster-local.yaml")
    assert cfg["provider"]["type"] == "fake_multinode"
    validate_config(cfg)  # what the autoscaler monitor runs on it (prepare_config needs the
    # example.yaml Ray's wheel lacks, so the file carries every default itself)
    assert cfg["head_node_type"] == "ray.head.default"  # the fake provider's fixed head type
    assert any(t.get("max_workers", 0) > 0 for t in cfg["available_node_types"].values())


def _check_serve_config(serve_cfg: dict) -> ServeDeploySchema:
    schema = ServeDeploySchema.model_validate(serve_cfg)
    for app in schema.applications:
        assert app.import_path == "serve_app.app:build_app"
        AppConfig.model_validate(app.args)
    return schema


def test_rayservice_serve_config_v2_is_our_serve_config() -> None:
    manifest = _load("deploy/kuberay/rayservice.yaml")
    assert manifest["kind"] == "RayService"
    serve_cfg = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    _check_serve_config(serve_cfg)
    assert serve_cfg["applications"] == _load("configs/qwen.yaml")["applications"]
    cluster = manifest["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["rayVersion"] == __import__("ray").__version__
    group = cluster["workerGroupSpecs"][0]
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] >= 1 and group["minReplicas"] <= group["maxReplicas"]


SERVE_CONFIGS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", SERVE_CONFIGS)
def test_serve_configs_validate(path: str) -> None:
    _check_serve_config(_load(path))


def test_rayservice_rejects_a_broken_serve_config() -> None:
    """The check above can fail: a misspelt key in args is refused by our tree."""
    serve_cfg = yaml.safe_load(_load("deploy/kuberay/rayservice.yaml")["spec"]["serveConfigV2"])
    serve_cfg["applications"][0]["args"]["llm"][0]["max_lora"] = 8
    with pytest.raises(ValueError, match="max_lora"):
        _check_serve_config(serve_cfg)


def test_grafana_dashboard_queries_only_metrics_we_export() -> None:
    import json
    import re

    dash = json.loads((ROOT / "deploy/grafana/loraserve.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {
        m for e in exprs for m in re.findall(r"ray_(loraserve_\w+?)(?:_total|_bucket|_count)?\{", e)
    }
    code = "".join(
        (ROOT / f).read_text()
        for f in (
            "serve_app/deployments/metrics.py",
            "serve_app/routing/publisher.py",
            "serve_app/routing/router.py",
        )
    )
    defined = set(re.findall(r'"(loraserve_\w+)"', code))
    assert used and used <= defined, used - defined
    assert {"loraserve_requests", "loraserve_cache_hits", "loraserve_routing_decisions"} <= used


def test_every_way_of_starting_ray_gets_our_serve_settings() -> None:
    """cluster.yaml's `ray start` lines, the KubeRay image and the local cluster's instructions
    carry serve_app.env.RAY_DEFAULTS, as `make run` and the tests do: a node started without them
    would run Serve with other settings than every other path."""
    from serve_app.env import RAY_DEFAULTS

    settings = [f"{k}={v}" for k, v in RAY_DEFAULTS.items()]
    cfg = _load("cluster.yaml")
    for cmd in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]:
        if "ray start" in cmd:
            assert all(s in cmd.split("ray start")[0] for s in settings), cmd
    for rel in ("deploy/Dockerfile", "deploy/cluster-local.yaml"):
        text = (ROOT / rel).read_text()
        assert all(s in text for s in settings), rel
