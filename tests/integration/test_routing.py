"""Adapter-aware routing on local Ray Serve with several small simulated replicas.

One Serve app for the module (replicas from serve_app/routing/simulated.py: the real AdapterPool
and ResidencyReporter, adapter loads simulated by sleeps), reached through a handle only.
"""

import asyncio
from collections import Counter

import pytest
import ray
from ray import serve

from serve_app.routing.router import request_router_config
from serve_app.routing.serve_internals import (
    SERVE_NAMESPACE,
    replica_actor_name,
    request_router_of,
)
from serve_app.routing.simulated import PoolReplica
from tests.ray_start import init_ray

APP = "routing-it"
ARGS = dict(slots=2, k=1, load_s=0.2, service_s=0.05, eviction="lru")


def _deploy(replicas: int):
    app = PoolReplica.options(
        num_replicas=replicas,
        max_ongoing_requests=2,
        request_router_config=request_router_config(stats_period_s=0.5),
    ).bind(**ARGS)
    return serve.run(app, name=APP, route_prefix=None)


@pytest.fixture(scope="module")
def handle():
    init_ray(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(proxy_location="Disabled")
    try:
        yield _deploy(3)
    finally:
        serve.shutdown()
        ray.shutdown()


def call(handle, adapter: str) -> dict:
    return handle.options(multiplexed_model_id=adapter).remote().result(timeout_s=60)


async def _burst(handle, adapters: list[str]) -> list[dict]:
    return await asyncio.gather(
        *(handle.options(multiplexed_model_id=a).remote() for a in adapters)
    )


def burst(handle, adapters: list[str]) -> list[dict]:
    return asyncio.run(_burst(handle, adapters))


def test_same_adapter_goes_to_same_replica(handle):
    for a in ["aff-a", "aff-b", "aff-c"]:
        replies = [call(handle, a) for _ in range(6)]
        assert len({r["replica"] for r in replies}) == 1
        assert replies[-1]["adapter_loads"] == 1  # loaded once, then hits


def test_burst_for_a_cold_adapter_loads_it_once(handle):
    # As many requests as one replica accepts: all of them queue there, none loads it elsewhere.
    replies = burst(handle, ["cold-burst"] * 2)
    assert all(r["adapter_loads"] == 1 for r in replies)
    assert len({r["replica"] for r in replies}) == 1


def test_burst_of_many_cold_adapters_loads_each_once(handle):
    # More adapters than the 6 slots, all requests at once (more than the replicas accept, so
    # some are rejected and retried): requests wait in the router for their adapter's replica
    # instead of loading it on a second one, and an adapter with requests still waiting is not
    # evicted under them.
    adapters = [f"burst-{i}" for i in range(8) for _ in range(2)]
    replies = burst(handle, adapters)
    for a in set(adapters):
        mine = [r for r in replies if r["adapter"] == a]
        assert len({r["replica"] for r in mine}) == 1, (a, mine)
        assert all(r["adapter_loads"] == 1 for r in mine), (a, mine)


def test_hot_adapter_spills_to_a_second_replica(handle):
    # Hot by observed rate: 24 requests after the ~20 above make it over 1/3 of the traffic.
    replies = burst(handle, ["hot"] * 24)
    per_replica = Counter(r["replica"] for r in replies)
    assert len(per_replica) >= 2, per_replica


def test_dead_replica_is_dropped_from_routing(handle):
    first = call(handle, "victim-adapter")
    dead = first["replica"]
    ray.kill(
        ray.get_actor(replica_actor_name(APP, "PoolReplica", dead), namespace=SERVE_NAMESPACE),
        no_restart=True,
    )
    replies = [call(handle, "victim-adapter") for _ in range(5)]
    replies += burst(handle, [f"after-kill-{i}" for i in range(6)])
    assert all(r["replica"] != dead for r in replies)


def test_added_replica_gets_traffic(handle):
    before = {call(handle, f"scale-{i}")["replica"] for i in range(6)}
    handle = _deploy(4)
    seen: set[str] = set()
    for i in range(30):  # cold adapters spread over free slots, the new replica's included
        seen |= {r["replica"] for r in burst(handle, [f"new-{i}-{j}" for j in range(4)])}
        if seen - before:
            break
    assert seen - before
    # Affinity survives the scale-up for adapters already placed.
    a = call(handle, "scale-0")["replica"]
    assert all(call(handle, "scale-0")["replica"] == a for _ in range(3))


def test_requests_for_one_adapter_are_served_in_arrival_order(handle):
    # One replica taking one request at a time: the others wait in the router, backing off. The
    # freed replica goes to the oldest of them, not to whichever asks first after it frees up.
    # (A request the replica rejects in a race with its previous one's end goes back in line, so
    # it can lose one place; before this, requests were overtaken by 2-4 later ones.)
    app = PoolReplica.options(
        num_replicas=1,
        max_ongoing_requests=1,
        request_router_config=request_router_config(stats_period_s=0.5),
    ).bind(**{**ARGS, "k": 1, "service_s": 0.1})
    one = serve.run(app, name="fifo-it", route_prefix=None)
    call(one, "fifo")  # loaded: from here on every request is a hit

    async def arrivals() -> list[int]:
        done: list[int] = []

        async def send(i: int) -> None:
            await asyncio.sleep(0.03 * i)
            await one.options(multiplexed_model_id="fifo").remote()
            done.append(i)

        await asyncio.gather(*(send(i) for i in range(8)))
        return done

    try:
        order = asyncio.run(arrivals())
        overtaken = [sum(1 for j in order[: order.index(i)] if j > i) for i in range(8)]
        assert max(overtaken) <= 1, order
        # and the router forgets them once served (Serve's per-adapter index of pending requests
        # used to keep every request, payload included, for the life of the router)
        assert not request_router_of(one).pending_for_model("fifo")
    finally:
        serve.delete("fifo-it")
