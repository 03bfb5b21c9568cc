"""Autoscaling end to end on one machine: Ray's real autoscaler with the fake multi-node provider
(deploy/cluster-local.yaml), the app with Serve autoscaling. Load rises until Serve adds a
replica and the autoscaler adds a node for it, then stops until both scale back down; every
request sent during the episode must be answered.

What ``ray.cluster_utils.AutoscalingCluster.start()`` does, with the shipped config instead of the
``example.yaml`` Ray 2.60's wheel lacks, and a free GCS port: ``ray start --head
--autoscaling-config=...`` under ``RAY_FAKE_CLUSTER=1``.
NOTE: ``ray stop --force`` (before and after) kills every Ray process on the machine: run this
module alone, under the shared lock (``flock /tmp/loraserve-ray.lock``), as the whole suite does.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import yaml
from ray import serve

from serve_app import build_app
from tests.cluster.conftest import BASE, Load, app_config, free_port, wait_ready

LLM = f"llm:{BASE}"
ROOT = Path(__file__).parents[2]
RAY = str(Path(sys.executable).parent / "ray")


def _ray_stop() -> None:
    subprocess.run([RAY, "stop", "--force"], check=False, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def cluster(demo_assets, tmp_path_factory):
    port = free_port()
    ip = ray.util.get_node_ip_address()  # what the fake provider's worker nodes use
    cfg = yaml.safe_load((ROOT / "deploy/cluster-local.yaml").read_text())
    cfg["provider"]["gcs_address"] = f"{ip}:{port}"
    path = tmp_path_factory.mktemp("autoscaler") / "cluster.yaml"
    path.write_text(json.dumps(cfg))
    head = cfg["available_node_types"]["ray.head.default"]["resources"]
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    _ray_stop()
    subprocess.run(
        [
            RAY,
            "start",
            "--head",
            f"--port={port}",
            f"--autoscaling-config={path}",
            f"--num-cpus={head['CPU']}",
            f"--resources={json.dumps({k: v for k, v in head.items() if k != 'CPU'})}",
            "--include-dashboard=false",
        ],
        check=True,
        env=env,
        capture_output=True,
        timeout=120,
    )
    try:
        ray.init(address=f"{ip}:{port}", log_to_driver=False)
        http = free_port()
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": http})
        deployment = {
            "max_ongoing_requests": 2,
            "autoscaling_config": {
                "min_replicas": 1,
                "max_replicas": 2,
                "target_ongoing_requests": 1,
                "upscale_delay_s": 1,
                "downscale_delay_s": 5,
                "look_back_period_s": 2,
                "metrics_interval_s": 0.5,
            },
            "ray_actor_options": {"num_cpus": 0.2, "resources": {"replica": 1}},
        }
        app = build_app(app_config(demo_assets, deployment))
        serve.run(app, name="loraserve", route_prefix="/")
        url = f"http://127.0.0.1:{http}"
        wait_ready(url)
        yield url
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            _ray_stop()


def _running_replicas() -> int:
    dep = serve.status().applications["loraserve"].deployments[LLM]
    return dep.replica_states.get("RUNNING", 0)


def _alive_nodes() -> int:
    return sum(1 for n in ray.nodes() if n["Alive"])


def _wait(what: str, pred, timeout_s: float = 150) -> float:
    """Poll ``pred`` until true; return the seconds it took (fail after ``timeout_s``)."""
    start = time.time()
    while not pred():
        assert time.time() - start < timeout_s, f"timed out waiting for {what}"
        time.sleep(1)
    return time.time() - start


def test_load_adds_replica_and_node_then_both_scale_down(cluster):
    assert _running_replicas() == 1 and _alive_nodes() == 1
    with Load(cluster, clients=4, timeout_s=120) as load:
        up = _wait("a second replica on a new node", lambda: _running_replicas() == 2)
        assert _alive_nodes() == 2  # the replica needed {"replica": 1}: only a new node has it
        time.sleep(3)
        answered_at_peak = load.counts()["answered"]
        load.clients = 0
        down = _wait("scale down to one replica", lambda: _running_replicas() == 1)
        node_gone = _wait("the idle node removed", lambda: _alive_nodes() == 1)
    total = load.counts()
    print(
        f"scale-up {up:.0f}s, replica scale-down {down:.0f}s, node removal {node_gone:.0f}s "
        f"later; requests {dict(total)}"
    )
    assert answered_at_peak > 0
    assert total["sent"] == total["answered"] > 0  # every request of the episode answered
