"""The app on a 3-node Ray cluster (``ray.cluster_utils.Cluster`` on this machine): LLM replicas on
different nodes, adapters served from each, then a node holding a replica is killed while
clients keep sending. Every request must end with an answer or an error reply (none lost, none
hanging), Serve must replace the lost replica, and the service must keep answering. Each node
has a disk cache of its own (``LORASERVE_ADAPTER_CACHE_DIR``), as separate machines do: an S3
adapter loaded again goes back to the node that has its files.

Placement is forced with a custom resource: every node has ``{"replica": 1}`` and every LLM
replica asks for it, so two replicas sit on two different nodes and the third node has room for
the replacement. Only the head has CPUs (the LLM replicas ask for none), so the ingress, which
asks for some, always sits on the head beside the proxy and a worker can be lost without it.
One HTTP proxy (on the head): on one machine every node has the same IP, so per-node proxies
would collide on the port.
"""

import time
from pathlib import Path

import httpx
import pytest
import ray
from ray import serve
from ray.cluster_utils import Cluster
from ray.util.state import list_actors

from serve_app import build_app
from tests.cluster.conftest import ADAPTERS, BASE, Load, app_config, wait_ready
from tests.ports import free_port
from tests.s3_server import s3_server

LLM = f"llm:{BASE}"
TOKEN = "multinode-admin-token"


@pytest.fixture(scope="module")
def s3(demo_assets):
    """A real S3-compatible server (moto) holding two demo adapters under s3://loras/<name>."""
    import boto3

    with s3_server() as url:  # NOTE: before the cluster starts, so replicas get its credentials
        client = boto3.client("s3", endpoint_url=url)
        client.create_bucket(Bucket="loras")
        for name in ("sql", "poet"):
            for f in Path(demo_assets["llm"]["adapters"][name]).iterdir():
                client.upload_file(str(f), "loras", f"{name}/{f.name}")
        yield url


@pytest.fixture(scope="module")
def cluster(demo_assets, s3, tmp_path_factory):
    caches = tmp_path_factory.mktemp("node-caches")

    def disk(i: int) -> dict:  # each node's own disk cache, as on separate machines
        return {"LORASERVE_ADAPTER_CACHE_DIR": str(caches / f"node{i}")}

    c = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 2, "resources": {"replica": 1}, "include_dashboard": True,
            "env_vars": disk(0),
        },
    )  # fmt: skip
    workers = [c.add_node(num_cpus=0, resources={"replica": 1}, env_vars=disk(i)) for i in (1, 2)]
    c.wait_for_nodes()
    c.connect()
    port = free_port()
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    deployment = {
        "num_replicas": 2,
        "max_ongoing_requests": 4,
        "ray_actor_options": {"num_cpus": 0, "resources": {"replica": 1}},
    }
    cfg = app_config(demo_assets, deployment) | {"admin_token": TOKEN}
    cfg["sources"]["s3_endpoint_url"] = s3
    serve.run(build_app(cfg), name="loraserve", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    wait_ready(url)
    try:
        yield c, workers, url
    finally:
        serve.shutdown()
        ray.shutdown()
        c.shutdown()


def _replica_nodes() -> dict[str, str]:
    """Alive LLM replica actor name -> node id."""
    actors = list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
    return {a.name: a.node_id for a in actors if a.class_name.endswith(LLM)}


def _actor_nodes(suffix: str) -> set[str]:
    actors = list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
    return {a.node_id for a in actors if a.class_name.endswith(suffix)}


def _resident_by_replica() -> dict[str, set[str]]:
    """Replica id -> resident adapters, from the replicas our router sends each adapter to."""
    handle = serve.get_deployment_handle(LLM, app_name="loraserve")
    handle.adapter_snapshot.remote().result()  # this handle's router now has the replica set
    time.sleep(2)  # ... and their routing stats
    out: dict[str, set[str]] = {}
    for a in ADAPTERS * 2:
        snap = handle.options(multiplexed_model_id=a).adapter_snapshot.remote().result()
        out.setdefault(snap["replica"], set()).update(snap["resident"])
    return out


def test_replicas_on_different_nodes_serve_adapters_from_each(cluster):
    c, workers, url = cluster
    nodes = _replica_nodes()
    assert len(nodes) == 2 and len(set(nodes.values())) == 2, nodes
    # NOTE: this test is about serving from both nodes, so it starts after the replicas' first
    # report (a poll every second). The router's start-up placement (configured slots before any
    # report) and a free slot ranked above "loading nothing" are unit-tested in test_policy.py.
    time.sleep(2)
    with httpx.Client(base_url=url, timeout=60) as client:
        for a in ADAPTERS:
            body = {"model": f"{BASE}:{a}", "prompt": "Hello", "max_tokens": 4}
            assert client.post("/v1/completions", json=body).status_code == 200
    resident = _resident_by_replica()
    # Two adapter slots per replica, four adapters: both replicas hold (and served) adapters.
    assert len(resident) == 2 and all(resident.values()), resident
    assert set().union(*resident.values()) == set(ADAPTERS), resident


def _holder(adapter: str) -> str:
    """The replica a request for ``adapter`` is routed to as a hit (where it is resident)."""
    handle = serve.get_deployment_handle(LLM, app_name="loraserve")
    snap = handle.options(multiplexed_model_id=adapter).adapter_snapshot.remote().result()
    assert adapter in snap["resident"], (adapter, snap)
    return snap["replica"]


def _snapshots() -> dict[str, dict]:
    """One adapter_snapshot per LLM replica (concurrent calls reach both)."""
    handle = serve.get_deployment_handle(LLM, app_name="loraserve")
    seen: dict[str, dict] = {}
    for _ in range(20):
        for r in [handle.adapter_snapshot.remote() for _ in range(6)]:
            snap = r.result()
            seen[snap["replica"]] = snap
        if len(seen) == 2:
            break
    return seen


def test_a_cold_adapter_loads_on_the_node_that_has_its_files(cluster):
    # Registering an S3 adapter fetches it on one replica (validation), into that node's disk
    # cache only; that replica tells routers, and the first request for the adapter loads it
    # there, reading the disk. Both replicas are full (the test above), so without the
    # preference the choice would be a coin toss per adapter.
    _, _, url = cluster
    admin = httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {TOKEN}"})
    for name, source in {"s3sql": "s3://loras/sql", "s3poet": "s3://loras/poet"}.items():
        body = {"name": name, "base": BASE, "source": source}
        assert admin.post("/v1/adapters", json=body).status_code == 201
        time.sleep(2)  # the replicas' registry followers, then their next report to routers
        has_files = [r for r, snap in _snapshots().items() if name in snap["on_disk"]]
        assert len(has_files) == 1, _snapshots()  # one node fetched it; the other has no copy
        body = {"model": f"{BASE}:{name}", "prompt": "Hello", "max_tokens": 2}
        assert httpx.post(f"{url}/v1/completions", json=body, timeout=60).status_code == 200
        assert _holder(name) == has_files[0]
    admin.close()


def test_node_lost_mid_traffic_requests_answered_or_errored_none_lost(cluster):
    c, workers, url = cluster
    nodes = _replica_nodes()
    # The registry may share the lost node: its catalogue is durable and Serve restarts it.
    front = _actor_nodes("Ingress")
    victims = [w for w in workers if w.node_id in nodes.values() and w.node_id not in front]
    assert victims, "no worker node holds an LLM replica without the ingress"
    with Load(url, clients=3, timeout_s=60) as load:
        time.sleep(8)
        before = load.counts()
        killed_at = time.time()
        c.remove_node(victims[0], allow_graceful=False)
        # Serve notices the dead replica and starts a replacement on the free node.
        deadline = time.time() + 120
        while time.time() < deadline:
            alive = _replica_nodes()
            if len(alive) == 2 and victims[0].node_id not in alive.values():
                status = serve.status().applications["loraserve"].deployments[LLM]
                if status.status == "HEALTHY":
                    break
            time.sleep(1)
        replaced_at = time.time()
        time.sleep(10)
        after_replacement = load.counts(since=replaced_at + 2)
    total = load.counts()
    print(
        f"before kill {dict(before)}; total {dict(total)}; after replacement "
        f"{dict(after_replacement)}; replacement took {replaced_at - killed_at:.1f}s; "
        f"errors {dict(load.errors)}"
    )
    assert before["answered"] > 0 and before["errored"] == 0
    assert len(_replica_nodes()) == 2, "Serve did not replace the lost replica"
    # Every request sent got an answer or an error reply: none lost, none hung, no broken reply.
    assert total["sent"] == total["answered"] + total["errored"]
    assert total["hung"] == 0 and total["broken"] == 0
    # Requests caught on the lost replica say so (503: retry), not "internal error".
    assert {status for status, _ in load.errors} <= {503}, load.errors
    # The service kept answering, and once the replacement is up nothing fails any more.
    assert load.counts(since=killed_at)["answered"] > 0
    assert after_replacement["answered"] > 0 and after_replacement["errored"] == 0
