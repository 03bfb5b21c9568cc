"""Autoscaling end to end on one machine: Ray's real autoscaler with the fake multi-node provider
(deploy/cluster-local.yaml), the app with Serve autoscaling. Load rises until Serve adds a
replica and the autoscaler adds a node for it, then stops until both scale back down; every
request sent during the episode must be answered. The replica that joins warms first: it loads
the adapters the router will send it before it takes traffic, so its first request is a hit.

What ``ray.cluster_utils.AutoscalingCluster.start()`` does, with the shipped config instead of the
``example.yaml`` Ray 2.60's wheel lacks: ``ray start --head --autoscaling-config=...`` under
``RAY_FAKE_CLUSTER=1``, but on free ports and its own temp dir, and stopped by killing the
processes of that temp dir (by pid) instead of ``ray stop --force``, which would kill every Ray
process on the machine (a user's ``make run`` included). Cluster tests still run under the
shared lock here, like every test that starts Ray (2 cores).
"""

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import ray
import yaml
from ray import serve

from serve_app import build_app
from tests.cluster.conftest import ADAPTERS, BASE, Load, app_config, wait_ready
from tests.ports import free_port

LLM = f"llm:{BASE}"
ROOT = Path(__file__).parents[2]
RAY = str(Path(sys.executable).parent / "ray")


def _kill_cluster(temp_dir: str) -> None:
    """Kill (by pid) every process whose command line names ``temp_dir``: this cluster's GCS,
    raylets, workers, monitor and the fake provider's nodes (they all get the head's session)."""
    me = os.getpid()
    for _ in range(3):
        pids = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == me:
                continue
            try:
                if temp_dir in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(proc.name))
            except OSError:
                continue
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(1)


@pytest.fixture(scope="module")
def cluster(demo_assets):
    port = free_port()
    ip = ray.util.get_node_ip_address()  # what the fake provider's worker nodes use
    temp_dir = tempfile.mkdtemp(prefix="lsac", dir="/tmp")  # short: socket paths live under it
    cfg = yaml.safe_load((ROOT / "deploy/cluster-local.yaml").read_text())
    cfg["provider"]["gcs_address"] = f"{ip}:{port}"
    path = Path(temp_dir) / "cluster.yaml"
    path.write_text(json.dumps(cfg))
    head = cfg["available_node_types"]["ray.head.default"]["resources"]
    # NOTE: `ray start` turns on token auth when ~/.ray/auth_token exists unless RAY_AUTH_MODE
    # says otherwise, and this driver's Ray config (read when Ray was first imported) must agree:
    # the head (and the fake nodes it starts) get this process's mode, or "disabled" if unset.
    env = {
        **os.environ,
        "RAY_FAKE_CLUSTER": "1",
        "AUTOSCALER_UPDATE_INTERVAL_S": "1",
        "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"),
    }
    ports = {
        flag: free_port()
        for flag in (
            "ray-client-server-port",
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "runtime-env-agent-port",
            "metrics-export-port",
        )
    }
    try:
        started = subprocess.run(
            [
                RAY,
                "start",
                "--head",
                f"--port={port}",
                f"--temp-dir={temp_dir}",
                f"--autoscaling-config={path}",
                f"--num-cpus={head['CPU']}",
                f"--resources={json.dumps({k: v for k, v in head.items() if k != 'CPU'})}",
                "--include-dashboard=false",
                *(f"--{flag}={p}" for flag, p in ports.items()),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert started.returncode == 0, started.stdout + started.stderr
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
        except Exception:  # Ray may not have started
            pass
        ray.shutdown()
        _kill_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


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


def _replica_logs() -> list[str]:
    from serve_app.routing.serve_internals import serve_log_dir

    logs = sorted(Path(serve_log_dir()).glob("replica_loraserve_llm*.log"))
    return [p.read_text(errors="replace") for p in logs]


def _warm_start(text: str, first: int = 10) -> tuple[list[str], int, int]:
    """From one LLM replica's log: the adapters it warmed before taking traffic, how many of its
    first ``first`` requests had to load their adapter (the request id is on the pool's
    "-> resolving" line), and its requests served."""
    warmed = re.search(r"warmed \S+ replica \S+ with \[([^\]]*)\]", text)
    assert warmed, "every replica logs what it warmed"
    names = re.findall(r"'([^']+)'", warmed.group(1))
    after = text[warmed.end() :]
    calls = re.findall(r" (\S+) -- CALL (?:complete|generate) OK", after)
    loaders = set(re.findall(r" (\S+) -- adapter \S+: \S+ -> resolving", after))
    return names, sum(1 for rid in calls[:first] if rid in loaders), len(calls)


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
    starts = [_warm_start(t) for t in _replica_logs()]
    print(f"LLM replicas (warmed, misses in the first 10 requests, requests): {starts}")
    # The first replica started alone (nothing to warm) and thrashed (4 adapters demanded
    # equally, 2 slots). The one that joined warmed adapters the first did not hold before it
    # took traffic, so fewer of its first requests had to load one.
    assert len(starts) == 2
    (cold,) = [s for s in starts if not s[0]]
    (joined,) = [s for s in starts if s[0]]
    assert 1 <= len(joined[0]) <= 2 and set(joined[0]) <= set(ADAPTERS)
    assert joined[2] >= 10 and joined[1] < cold[1]
