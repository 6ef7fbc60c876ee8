"""Keeps aiortc's ICE on loopback when asked (tests, single-machine set-ups).

aioice skips 127.0.0.1 when it gathers host candidates, so two peers on one machine would talk over the LAN
or IPv6 addresses. Both the gateway and the edge client call :func:`use_loopback_only` before they create
a peer connection when their configuration says so.
"""

from __future__ import annotations

import aioice.ice

_original_get_host_addresses = aioice.ice.get_host_addresses


def _loopback_addresses(use_ipv4: bool = True, use_ipv6: bool = True) -> list[str]:
    return ["127.0.0.1"] if use_ipv4 else []


def use_loopback_only(enabled: bool = True) -> None:
    aioice.ice.get_host_addresses = _loopback_addresses if enabled else _original_get_host_addresses
