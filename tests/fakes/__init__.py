"""Fake network services for the acquisition tests: real HTTP servers on 127.0.0.1, nothing else.

:func:`block_non_loopback` makes any Python-level connection to another address fail loudly, so a
test proves that no request leaves the machine (the planet SDK's bundle-spec fetch included).
"""

from __future__ import annotations

import socket
from typing import Any

import pytest

from tests.fakes.http import LOOPBACK, FakeServer, Request, Response


class LeftTheMachineError(AssertionError):
    """A test tried to reach an address other than 127.0.0.1."""


def block_non_loopback(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Refuse socket connections to anything but the loopback; returns the list of refused addresses."""
    refused: list[Any] = []
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def check(address: Any) -> None:
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and host not in LOOPBACK and not host.startswith("/"):
            refused.append(address)
            raise LeftTheMachineError(f"test tried to connect to {address}; only 127.0.0.1 is allowed")

    def connect(self: socket.socket, address: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            check(address)
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            check(address)
        return real_connect_ex(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host not in LOOPBACK:
            refused.append(host)
            raise LeftTheMachineError(f"test tried to resolve {host}; only 127.0.0.1 is allowed")
        return real_getaddrinfo(host, *args, **kwargs)

    real_getaddrinfo = socket.getaddrinfo
    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return refused


__all__ = ["FakeServer", "LeftTheMachineError", "Request", "Response", "block_non_loopback"]
