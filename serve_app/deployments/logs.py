"""Send our loggers (``adapters.*``, ``serve_app.*``) to the replica's Serve log file at INFO, so
every adapter load, eviction and routing decision shows up where Serve users look for logs
(``/tmp/ray/session_latest/logs/serve/replica_*.log``), with Serve's replica tags.
"""

import logging

_OURS = ("adapters", "serve_app")


def to_replica_log(*extra: str, level: int = logging.INFO) -> None:
    """Idempotent; call from a deployment's constructor (inside the replica process). ``extra``
    names more loggers to route (e.g. "vllm")."""
    serve_handlers = logging.getLogger("ray.serve").handlers
    for name in (*_OURS, *extra):
        logger = logging.getLogger(name)
        logger.setLevel(level)
        if serve_handlers:
            logger.handlers = list(serve_handlers)
            logger.propagate = False
