"""What one node tells the others about a room, as bytes on a Redis channel.

Each room has its own channel (:func:`channel_for`), so a node subscribes only
to the rooms it hosts members of. A message is a one-line JSON header and,
after the newline, the Socket.IO packet exactly as the origin encoded it for
its own clients: a receiving node hands those bytes to its sockets without
decoding the payload (no JSON parse of a 500 KiB document per node). The
header carries what the receiver acts on: the origin's host id first (a node
skips its own messages by comparing a prefix), the kind, the room, the
position of a stored item, the sids to skip and the event name.

This is collab's own format, not python-socketio's pub/sub protocol: nodes of
one deployment must run versions that speak the same :data:`VERSION`.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any

#: bumped when the header changes meaning; a node ignores messages of another version
VERSION = 1
#: every room's channel starts with this (never a ``{``: no hash tag, so Redis
#: Cluster spreads the rooms' channels over its shards)
CHANNEL_PREFIX = "collab:room:"

EMIT = "emit"
REVOKE = "revoke"
#: a node's first live member of a document entered: the others send their members'
#: awareness states again (nobody else would until the next renewal)
ASK = "ask"

#: events counted as presence in the pub/sub metrics; everything else is a broadcast
PRESENCE_EVENTS = frozenset({"user:joined", "user:left", "chat:typing", "documents:awareness"})


def channel_for(room: str) -> str:
    """The Redis channel of the room named ``room`` (``document_x``, ``chat_y``)."""
    return CHANNEL_PREFIX + room


def room_of(channel: str) -> str | None:
    return channel[len(CHANNEL_PREFIX):] if channel.startswith(CHANNEL_PREFIX) else None


def own_prefix(host_id: str) -> bytes:
    """The first bytes of every message ``host_id`` publishes."""
    return b'{"h":' + json.dumps(host_id).encode() + b","


@dataclasses.dataclass(frozen=True, slots=True)
class Envelope:
    """One message between nodes: a room broadcast, a revocation, or an ask."""

    host: str
    kind: str
    room: str
    #: the stored item's position (seq, version) for broadcasts delivered in order
    position: int | None = None
    #: python-socketio sids (on the origin node) the broadcast must not reach
    skip: tuple[str, ...] = ()
    event: str = ""
    #: the encoded Socket.IO packet (its text part, when it has attachments)
    packet: str = ""
    #: binary attachments of the packet, in order
    attachments: tuple[bytes, ...] = ()
    #: a revocation's user; the user an awareness broadcast came from
    user_id: str = ""

    @property
    def metric_kind(self) -> str:
        if self.kind == REVOKE:
            return "revocation"
        if self.kind == ASK:
            return "presence"
        return "presence" if self.event in PRESENCE_EVENTS else "broadcast"

    def encode(self) -> bytes:
        header: dict[str, Any] = {"h": self.host, "v": VERSION, "k": self.kind, "r": self.room}
        if self.position is not None:
            header["p"] = self.position
        if self.skip:
            header["s"] = list(self.skip)
        if self.event:
            header["e"] = self.event
        if self.attachments:
            header["a"] = [base64.b64encode(a).decode("ascii") for a in self.attachments]
        if self.user_id:
            header["u"] = self.user_id
        # ensure_ascii keeps the header one line whatever an id holds
        line = json.dumps(header, separators=(",", ":"))
        return line.encode() + b"\n" + self.packet.encode("utf-8")

    @classmethod
    def decode(cls, data: bytes) -> Envelope | None:
        """The envelope in ``data``; None for anything that is not one of ours."""
        line, sep, body = data.partition(b"\n")
        if not sep:
            return None
        try:
            header = json.loads(line)
            if not isinstance(header, dict) or header.get("v") != VERSION:
                return None
            host, kind, room = header["h"], header["k"], header["r"]
            position = header.get("p")
            skip = tuple(header.get("s", ()))
            attachments = tuple(base64.b64decode(a, validate=True) for a in header.get("a", ()))
            packet = body.decode("utf-8")
        except (ValueError, KeyError, TypeError):
            return None
        if not (isinstance(host, str) and isinstance(room, str) and kind in (EMIT, REVOKE, ASK)):
            return None
        if position is not None and (not isinstance(position, int)
                                     or isinstance(position, bool)):
            return None
        if not all(isinstance(sid, str) for sid in skip):
            return None
        return cls(host, kind, room, position, skip, str(header.get("e", "")), packet,
                   attachments, str(header.get("u", "")))
