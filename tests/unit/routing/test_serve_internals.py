"""Every private Ray Serve name the project relies on still exists in the installed Ray, with the
parameters we call or override it with: an upgrade that renames one fails here, loudly, instead of
silently skipping an override (fairness and eviction guarding would degrade without an error)."""

import inspect
import re

import pytest
from ray.serve.request_router import RequestRouter

from serve_app.routing import serve_internals
from serve_app.routing.router import AdapterAwareRouter


@pytest.mark.parametrize(
    ("owner", "name", "params"),
    serve_internals.PRIVATE_SURFACE,
    ids=[f"{o.__name__}.{n}" for o, n, _ in serve_internals.PRIVATE_SURFACE],
)
def test_private_name_exists_with_our_signature(owner, name, params):
    if params is None:  # an attribute set in __init__: look for it in the constructor's code
        src = inspect.getsource(owner.__init__)
        assert re.search(rf"self\.{name}\s*(:[^=]+)?=", src), name
        return
    assert tuple(inspect.signature(getattr(owner, name)).parameters) == params


def test_every_method_our_router_overrides_exists_in_ray():
    # Names defined by our classes that Ray's RequestRouter must also define (an override of a
    # name Ray no longer has would never be called).
    ours = set(vars(AdapterAwareRouter)) | set(vars(serve_internals.RouterHooks))
    own_api = {
        "initialize_state",  # Ray calls it; defined as a no-op hook in the base too
        "decision_counts",
        "on_routing_started",
        "on_request_abandoned",
        "on_routing_ended",
        "hand_off",
        "pending_oldest_first",
        "deployment_name",
        "pending_for_model",
        "_prune_model_index",
    }
    overrides = {n for n in ours - own_api if not n.startswith("__")}
    missing = sorted(n for n in overrides if not hasattr(RequestRouter, n))
    assert not missing, f"overrides of names the installed Ray no longer has: {missing}"
    assert hasattr(RequestRouter, "initialize_state")
