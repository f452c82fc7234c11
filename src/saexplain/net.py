"""Ports on 127.0.0.1 for the local servers saexplain starts (the web UI, llama.cpp's server, the fake LLM
server of the tests and benchmarks)."""

from __future__ import annotations

import socket


def free_port(preferred: int = 0) -> int:
    """`preferred` when it can be bound on 127.0.0.1, else a port the system picks."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
