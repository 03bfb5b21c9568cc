"""The app on a 3-node Ray cluster (``ray.cluster_utils.Cluster`` on this machine): LLM replicas on
different nodes, adapters served from each, then a node holding a replica is killed while
clients keep sending. Every request must end with an answer or an error reply (none lost, none
hanging), Serve must replace the lost replica, and the service must keep answering.

Placement is forced with a custom resource: every node has ``{"replica": 1}`` and every LLM
replica asks for it, so two replicas sit on two different nodes and the third node has room for
the replacement. Only the head has CPUs (the LLM replicas ask for none), so the ingress, which
asks for some, always sits on the head beside the proxy and a worker can be lost without it.
One HTTP proxy (on the head): on one machine every node has the same IP, so per-node proxies
would collide on the port.
"""

import time

import httpx
import pytest
import ray
from ray import serve
from ray.cluster_utils import Cluster
from ray.util.state import list_actors

from serve_app import build_app
from tests.cluster.conftest import ADAPTERS, BASE, Load, app_config, wait_ready
from tests.ports import free_port

LLM = f"llm:{BASE}"


@pytest.fixture(scope="module")
def cluster(demo_assets):
    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "resources": {"replica": 1}, "include_dashboard": True},
    )
    workers = [c.add_node(num_cpus=0, resources={"replica": 1}) for _ in range(2)]
    c.wait_for_nodes()
    c.connect()
    port = free_port()
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    deployment = {
        "num_replicas": 2,
        "max_ongoing_requests": 4,
        "ray_actor_options": {"num_cpus": 0, "resources": {"replica": 1}},
    }
    serve.run(build_app(app_config(demo_assets, deployment)), name="loraserve", route_prefix="/")
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
