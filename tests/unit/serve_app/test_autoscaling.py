"""The adapter-aware autoscaling policy (pure) and the replica's pressure figures; one check runs
it through Serve's own wrapper with Serve's real context and config types (no Ray started)."""

from types import SimpleNamespace

import pytest

from serve_app.autoscaling import (
    POLICY_PATH,
    AdapterPressure,
    Pressure,
    adapter_aware_policy,
    desired_replicas,
)
from serve_app.config import DeploymentOptions


def test_without_load_pressure_it_is_serves_rule():
    calm = [Pressure(load_busy=0.05, loads_per_s=0.1, demanded=3, slots=4)] * 2
    assert desired_replicas(2, ongoing=6, target_ongoing=2, replicas=calm) == 3
    assert desired_replicas(2, ongoing=1, target_ongoing=2, replicas=[]) == 0.5


def test_thrashing_fleet_scales_out_with_short_queues():
    thrash = [Pressure(load_busy=0.6, loads_per_s=2, demanded=12, slots=4)] * 2
    want = desired_replicas(2, ongoing=2, target_ongoing=2, replicas=thrash)
    assert want == pytest.approx(2 * 0.6 / 0.25)  # by loads, under fit = 24 / 3.2 = 7.5
    # Demand that already fits the fleet: at most one replica more per decision.
    placed_badly = [Pressure(load_busy=0.9, loads_per_s=2, demanded=2, slots=4)] * 2
    assert desired_replicas(2, ongoing=2, target_ongoing=2, replicas=placed_badly) == 3


def test_busy_without_loads_is_not_pressure():
    stale = [Pressure(load_busy=0.9, loads_per_s=0, demanded=12, slots=4)]
    assert desired_replicas(1, ongoing=1, target_ongoing=1, replicas=stale) == 1


def test_policy_reads_serves_context_through_serves_wrapper():
    from ray.serve._private.common import DeploymentID, ReplicaID
    from ray.serve.autoscaling_policy import _apply_autoscaling_config
    from ray.serve.config import AutoscalingConfig, AutoscalingContext

    dep = DeploymentID(name="llm:x", app_name="app")
    rids = [ReplicaID(unique_id=f"r{i}", deployment_id=dep) for i in range(2)]
    figs = {"load_busy": 0.6, "loads_per_s": 2.0, "demanded": 12.0, "slots": 4.0}
    cfg = AutoscalingConfig(
        min_replicas=1, max_replicas=10, target_ongoing_requests=2, upscale_delay_s=0
    )

    def ctx(metrics):
        return AutoscalingContext(
            deployment_id=dep,
            deployment_name="llm:x",
            app_name="app",
            current_num_replicas=2,
            target_num_replicas=2,
            running_replicas=rids,
            total_num_requests=2.0,
            total_queued_requests=0.0,
            aggregated_metrics=metrics,
            raw_metrics={},
            capacity_adjusted_min_replicas=1,
            capacity_adjusted_max_replicas=10,
            policy_state={},
            last_scale_up_time=None,
            last_scale_down_time=None,
            current_time=None,
            config=cfg,
        )

    wrapped = _apply_autoscaling_config(adapter_aware_policy)
    thrashing = {k: {r: v for r in rids} for k, v in figs.items()}
    assert wrapped(ctx(thrashing))[0] == 5  # ceil(4.8)
    # No custom figures: Serve's rule wants 2 ongoing / 2 target = 1 replica, which Serve's
    # wrapper applies only after downscale_delay_s (600 s by default): the decision stays 2.
    assert wrapped(ctx({}))[0] == 2


def test_pressure_window_counts_loads_and_distinct_adapters():
    now = [100.0]
    p = AdapterPressure(slots=4, window_s=10, clock=lambda: now[0])
    now[0] = 110.0
    p.requested(["a", "b"])
    p.requested(["a"])
    p.on_pool_event("a", "ready", {"load_s": 2.0})
    p.on_pool_event("b", "ready", {"load_s": 3.0})
    p.on_pool_event("b", "evicted", {})
    # "a" was asked for twice, "b" once: only "a" is recurring demand.
    assert p.stats() == {"load_busy": 0.5, "loads_per_s": 0.2, "demanded": 1.0, "slots": 4.0}
    now[0] = 125.0  # the window moved past all of it
    assert p.stats() == {"load_busy": 0.0, "loads_per_s": 0.0, "demanded": 0.0, "slots": 4.0}


def test_config_switch_puts_the_policy_in_serves_autoscaling_config():
    from serve_app.app import _options

    d = DeploymentOptions(
        autoscaling_config={"min_replicas": 1, "max_replicas": 4},
        autoscaling_policy="adapter_aware",
    )
    opts = _options(d)
    assert opts["autoscaling_config"]["policy"] == {"policy_function": POLICY_PATH}
    from ray.serve.config import AutoscalingConfig

    assert AutoscalingConfig(**opts["autoscaling_config"]).policy.policy_function == POLICY_PATH
    assert "policy" not in _options(DeploymentOptions(autoscaling_config={}))["autoscaling_config"]


def test_policy_with_plain_namespace_context():
    ctx = SimpleNamespace(
        aggregated_metrics={"load_busy": {"r": 0.1}, "loads_per_s": {"r": 1.0}},
        current_num_replicas=1,
        total_num_requests=3.0,
        config=SimpleNamespace(get_target_ongoing_requests=lambda: 1.0),
    )
    assert adapter_aware_policy(ctx) == (3.0, {})
