"""What handlers publish through: one call per broadcast, a stored item at its position.

A chat's messages must reach its room in seq order (a document's changes in
version order) while the store calls behind them overlap. :meth:`Broadcasts.in_order`
takes the item's place in line before the store call (the sequencer,
:mod:`collab.broadcast.sequencer`); the slot's :meth:`~Slot.publish` sends it
once everything below its position has gone, through the node's broadcaster,
which orders it again against other nodes' items (:mod:`collab.broadcast.holdback`)::

    with broadcasts.in_order(room) as slot:
        stored, created = await store.add_message(...)
        if created:
            await slot.publish("chat:message", {"message": stored}, position=stored["seq"])

Leaving the block without publishing (the store call failed, or stored
nothing new) gives the place up.
"""

from __future__ import annotations

import functools
from typing import Any

from ..metrics import Metrics
from ..rooms import Room
from .local import LocalBroadcaster
from .sequencer import Sequencer, Ticket


class Broadcasts:
    """Room broadcasts of one node, counted once here (``collab_broadcasts``)."""

    def __init__(self, broadcaster: LocalBroadcaster, metrics: Metrics) -> None:
        self._broadcaster = broadcaster
        self._metrics = metrics
        self._sequencer = Sequencer()

    @property
    def waiting_rooms(self) -> int:
        """Rooms with a stored item in line (for tests: 0 once everything went out)."""
        return len(self._sequencer)

    async def send(self, room: Room, event: str, data: Any, *, skip_sid: Any = None,
                   sender: str = "") -> None:
        """Send an event that has no position (presence, typing) to everyone in ``room``,
        on every node; ``sender``: the user it came from, for the other nodes (whose an
        awareness state is)."""
        self._metrics.broadcast(event)
        await self._broadcaster.broadcast(room, event, data, skip_sid=skip_sid, sender=sender)

    async def send_here(self, room: Room, event: str, data: Any, *,
                        position: int | None = None) -> None:
        """Send an event to this node's members of ``room`` only: for what every node
        works out for itself (expired awareness states, a change whose broadcast never
        came); ``position``: the stored item's, for the members whose join had it."""
        self._metrics.broadcast(event)
        skip = [] if position is None else self._broadcaster.skipping(room.name, position, None)
        self._broadcaster.to_receivers(room.name, event, data, skip)
        await self._broadcaster.emit(event, data, "/", room=room.name, skip_sid=skip or None)

    async def publish_at(self, room: Room, event: str, data: Any, *, position: int,
                         skip_sid: Any = None) -> None:
        """Send the item stored at ``position`` now: for a caller that orders its store
        calls and broadcasts itself (one document's changes go one at a time)."""
        await self._publish_at(room, event, data, position, skip_sid)

    async def ask_awareness(self, room: Room) -> None:
        """This node's first live member of a document entered ``room`` (its live
        sub-room): the other nodes send their members' awareness states again."""
        await self._broadcaster.ask(room)

    def covered(self, room: Room, sid: str, position: float | None) -> None:
        """``sid``'s join read ``room`` up to ``position`` (READING: is reading a copy that
        every delivery here goes through first; None: the join failed): positioned
        broadcasts up to it skip ``sid`` (collab/broadcast/joins.py)."""
        self._broadcaster.joins.mark(room.name, sid, position)

    def in_order(self, room: Room) -> Slot:
        """A place in ``room``'s line for one stored item; take it before the store call."""
        return Slot(self, room, self._sequencer.begin(room.name))

    async def _publish_at(self, room: Room, event: str, data: Any, position: int,
                          skip_sid: Any) -> None:
        self._metrics.broadcast(event)
        await self._broadcaster.broadcast(room, event, data, position=position,
                                          skip_sid=skip_sid)


class Slot:
    """One stored item's place in its room's line; publish it, or leave the block."""

    __slots__ = ("_broadcasts", "_room", "_ticket")

    def __init__(self, broadcasts: Broadcasts, room: Room, ticket: Ticket) -> None:
        self._broadcasts = broadcasts
        self._room = room
        self._ticket = ticket

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._ticket.cancel()

    async def publish(self, event: str, data: Any, *, position: int,
                      skip_sid: Any = None) -> None:
        """Send the item stored at ``position`` once every item below it has gone; wait
        for it. Raises what sending raised (for this item only; the line moves on)."""
        await self._ticket.release(position, functools.partial(
            self._broadcasts._publish_at, self._room, event, data, position, skip_sid))
