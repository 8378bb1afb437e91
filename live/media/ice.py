"""Which addresses we offer as ICE host candidates (docs/media.md, "Settings").

aiortc 1.16 has no setting for it: each transport's aioice Connection gathers on every interface
address but loopback (RFC 8445 §5.1.1.1), so a server whose clients reach it on 127.0.0.1 (tests, a
media process behind a local proxy) or on one chosen public address cannot say so. `gather_on`
gathers each transport of a peer connection, before aiortc would, on exactly the configured addresses,
through aioice's own `get_component_candidates`. It touches three private fields of aioice's
Connection (pinned to aioice 0.13 in pyproject.toml); `check_supported` fails loudly at start-up if a
later aioice renamed them, rather than gathering on the wrong addresses.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Sequence
from typing import Any

from aioice import Connection
from aiortc import RTCIceServer, RTCPeerConnection

_FIELDS = ("_local_candidates", "_local_candidates_start", "_local_candidates_end", "_components")


def check_supported(addresses: Sequence[str]) -> None:
    """At start-up: aioice still has the internals `gather_on` uses, and every address can be bound
    (an address the machine does not have would answer offers with no candidate at all)."""
    probe = Connection(ice_controlling=False)
    missing = [f for f in _FIELDS if not hasattr(probe, f)]
    if missing or not hasattr(probe, "get_component_candidates"):
        raise RuntimeError(f"LIVESALE_MEDIA_ADDRESSES needs aioice 0.13's Connection internals ({missing})")
    for address in addresses:
        with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind((address, 0))
            except OSError as exc:
                raise ValueError(f"LIVESALE_MEDIA_ADDRESSES: cannot bind UDP on {address!r}: {exc.strerror}") from exc


def ice_servers(urls: Iterable[str]) -> list[RTCIceServer]:
    """Our STUN/TURN servers; an empty list (not None, which aiortc turns into Google's STUN server)."""
    return [RTCIceServer(urls=u) for u in urls]


def _connections(pc: RTCPeerConnection) -> list[Any]:
    found: dict[int, Any] = {}
    dtls = [t.sender.transport for t in pc.getTransceivers() if t.sender.transport is not None]
    if pc.sctp is not None:
        dtls.append(pc.sctp.transport)
    for d in dtls:
        conn = d.transport.iceGatherer._connection
        found[id(conn)] = conn
    return list(found.values())


async def gather_on(pc: RTCPeerConnection, addresses: Sequence[str]) -> None:
    """Gather every not yet gathered transport of `pc` on `addresses` only (and the STUN/TURN
    candidates those sockets yield). Call after the transceivers exist (addTransceiver, or
    setRemoteDescription on the answering side) and before setLocalDescription."""
    if not addresses:
        return
    for conn in _connections(pc):
        if conn._local_candidates_start:
            continue
        conn._local_candidates_start = True
        for component in sorted(conn._components):
            conn._local_candidates += await conn.get_component_candidates(
                component=component, addresses=list(addresses))
        conn._local_candidates_end = True
