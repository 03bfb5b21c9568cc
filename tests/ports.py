"""A free TCP port on the loopback interface, for the servers tests start (see benchmarks/ports)."""

from benchmarks.ports import free_port

__all__ = ["free_port"]
