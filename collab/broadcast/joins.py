"""What a join already gave its connection: positioned broadcasts it must not get again.

A join enters the room first and reads the store after (so that no broadcast
can fall between the two). Whatever is delivered to the room in between, and
whatever stored before the read is delivered later (another node's broadcast
still on its way through Redis, one held back for an earlier position), is
then in the join's answer as well as on its way to the connection. A live
member would get a change twice; a plain (v1) member would even get an older
content after the newer one its join returned.

So a join records the position its answer covers (a document's version), and
positioned deliveries to the room skip that connection up to it. A join that
reads a live document's copy marks the connection *reading* before it enters:
every broadcast delivered to the room here meanwhile was applied to that copy
first (:meth:`collab.livedocs.LiveDocuments.observed`, or the change that made
it on this node), so it is in the answer.
"""

from __future__ import annotations

import math
from collections.abc import Collection

#: the position of a connection whose join is reading: everything delivered is in it
READING = math.inf


class JoinPositions:
    """Per room, the connections whose join covered broadcasts up to some position."""

    def __init__(self) -> None:
        #: room -> sid -> position covered (READING while the join reads)
        self._covered: dict[str, dict[str, float]] = {}

    def __len__(self) -> int:
        return sum(map(len, self._covered.values()))

    def mark(self, room: str, sid: str, position: float | None) -> None:
        """``sid``'s join in ``room`` covers broadcasts up to ``position`` (None: forget it,
        the join failed)."""
        if position is None:
            covered = self._covered.get(room)
            if covered is not None:
                covered.pop(sid, None)
                if not covered:
                    del self._covered[room]
            return
        self._covered.setdefault(room, {})[sid] = position

    def skip(self, room: str, position: int, members: Collection[str]) -> list[str]:
        """The sids a broadcast at ``position`` to ``room`` must skip.

        Forgets, as it goes, the marks it will never need again: a finished join's
        once a later position is delivered (a room's broadcasts go in position
        order), and those of connections that left the room.
        """
        covered = self._covered.get(room)
        if not covered:
            return []
        skip = []
        for sid, upto in list(covered.items()):
            if position <= upto:
                skip.append(sid)
            if upto != READING and (position >= upto or sid not in members):
                del covered[sid]
        if not covered:
            del self._covered[room]
        return skip

    def forget_sid(self, sid: str, rooms: Collection[str]) -> None:
        """``sid`` disconnected: drop its marks in ``rooms``."""
        for room in rooms:
            self.mark(room, sid, None)
