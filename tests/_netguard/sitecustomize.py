"""Blocks every outbound connection that is not to loopback, in tests and their subprocesses.

Loaded in-process by conftest.py and in child processes through PYTHONPATH. A
blocked attempt raises, and is also appended to $OCTAVE_TOOLS_NETGUARD_LOG so the
test session fails even when the code under test swallowed the error.
"""

from __future__ import annotations

import ipaddress
import os
import socket

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_getaddrinfo = socket.getaddrinfo


class NetworkBlocked(RuntimeError):
    """A test tried to reach a host other than loopback."""


def _loopback(host: object) -> bool:
    if not isinstance(host, str):
        return False
    host = host.strip("[]").lower()
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _blocked(what: str) -> NetworkBlocked:
    log = os.environ.get("OCTAVE_TOOLS_NETGUARD_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"{os.getpid()} {what}\n")
    return NetworkBlocked(f"tests may not reach the network: {what}")


def _check(sock: socket.socket, address: object) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        host = address[0] if isinstance(address, tuple) else address
        if not _loopback(host):
            raise _blocked(f"connect to {address!r}")


def _connect(self: socket.socket, address: object) -> None:
    _check(self, address)
    _real_connect(self, address)  # type: ignore[arg-type]


def _connect_ex(self: socket.socket, address: object) -> int:
    _check(self, address)
    return _real_connect_ex(self, address)  # type: ignore[arg-type]


def _getaddrinfo(host: object, *args: object, **kwargs: object) -> object:
    if host is not None and not _loopback(host if isinstance(host, str) else str(host)):
        raise _blocked(f"name lookup of {host!r}")
    return _real_getaddrinfo(host, *args, **kwargs)  # type: ignore[arg-type]


def install() -> None:
    socket.socket.connect = _connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = _getaddrinfo  # type: ignore[assignment]


install()
