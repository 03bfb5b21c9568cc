"""A free TCP port on the loopback interface, for a server a benchmark or test starts next."""

import random
import socket

_LOW, _HIGH = 20000, 32768  # above Ray's worker ports (10002-19999), below the ephemeral range


def free_port() -> int:
    """A port nothing listens on now, drawn from 20000-32767.

    Not from binding port 0: that returns a port of the kernel's ephemeral range (32768-60999),
    which the kernel also hands to every outgoing connection and to Ray's own sockets, so between
    this check and the server's bind another process could take it (Serve's proxy then died with
    "Failed to bind"). Nothing is given a port of this range unless it asks for it by number.
    """
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(_LOW, _HIGH)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {_LOW}-{_HIGH - 1}")
