"""``init_ray``: ``ray.init`` for a test module, tried twice when Ray's own start-up times out.

Seen once in a full run (CI, stop 26): GCS, dashboard and monitors started but the raylet never
did, and ``ray.init`` gave up after its fixed 30 s ("The current node timed out during
startup"), failing every test of the module at setup. Nothing of ours has run at that point; a
second try starts a fresh node. Any other error is raised as it is.
"""

from typing import Any

STARTUP_TIMEOUT = "timed out during startup"


def init_ray(**kwargs: Any) -> Any:
    import ray  # NOTE: here, as the callers import it: after the suite's Ray settings are set

    try:
        return ray.init(**kwargs)
    except Exception as e:  # Ray raises a bare Exception for this
        if STARTUP_TIMEOUT not in str(e):
            raise
        print(f"ray.init: {e}; trying once more")
        ray.shutdown()
        return ray.init(**kwargs)
