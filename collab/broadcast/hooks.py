"""What a broadcaster that spans nodes asks of the node it runs in."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from .holdback import Fill, PositionLookup

if TYPE_CHECKING:
    from .wire import Envelope

#: ``(room name, user_id)``: take this node's connections of the user out of the room
RevokeHandler = Callable[[str, str], Awaitable[None]]


async def _nothing() -> None:
    return None


async def _no_position(room: str) -> int | None:
    return None


async def _no_revocation(room: str, user_id: str) -> None:
    return None


async def _not_watching(room: str, envelope: Envelope) -> None:
    return None


async def _nothing_to_resend(room: str) -> None:
    return None


async def _nothing_to_fill(room: str, positions: list[int]) -> None:
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class NodeHooks:
    """The node's answers to the broadcaster's questions, given at construction."""

    #: where a room's positioned broadcasts stand (read when its first local client enters)
    room_position: PositionLookup = _no_position
    #: another node revoked a user's access to a room
    revoked: RevokeHandler = _no_revocation
    #: the broadcaster was cut off from Redis and is back: what was published meanwhile
    #: (revocations too) is lost, so the node checks who may still be in its rooms
    resubscribed: Callable[[], Awaitable[None]] = _nothing
    #: another node's broadcast to a live document sub-room (``document_<id>#live``),
    #: in position order, before this node's members get it: the node's own copy of
    #: the document follows it (collab/livedocs.py)
    observe: Callable[[str, Envelope], Awaitable[None]] = _not_watching
    #: another node's first live member of a document entered its live sub-room: send
    #: the awareness states of this node's members there again (collab/app.py)
    asked: Callable[[str], Awaitable[None]] = _nothing_to_resend
    #: the broadcasts of these positions in a room never came (their node died between
    #: storing and publishing, or Redis lost them): deliver them here if the node can
    missed: Fill = _nothing_to_fill
