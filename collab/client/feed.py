"""Per-chat bookkeeping that turns live broadcasts and fetched pages into one feed.

Messages reach a client by three roads: live ``chat:message`` broadcasts, the
``messages`` of a ``chat:join`` (with ``since_seq`` after a reconnect) and
``chat:history`` pages fetched to fill a gap. They overlap and may arrive out
of order. Because the server numbers a chat's messages 1, 2, 3, ... without
gaps, delivering exactly the seq after the last one delivered, and holding
back anything later, yields every message once and in order.
"""

from __future__ import annotations

from typing import Any

Message = dict[str, Any]


class ChatFeed:
    """One joined chat: which seq was delivered last, and what is held back."""

    def __init__(self, last: int | None = None) -> None:
        #: seq of the last message delivered (or seen in the join's page); ``None`` while
        #: the first ``chat:join`` is in flight and everything is held back.
        self.last = last
        #: seq -> (message, recovered): received but not deliverable yet.
        self.held: dict[int, tuple[Message, bool]] = {}

    @property
    def joining(self) -> bool:
        return self.last is None

    def offer(self, messages: list[Message], recovered: bool) -> list[tuple[Message, bool]]:
        """Take messages from any road; return those now deliverable, in seq order."""
        for message in messages:
            seq = message.get("seq")
            if not isinstance(seq, int) or (self.last is not None and seq <= self.last):
                continue  # delivered already (or malformed)
            self.held.setdefault(seq, (message, recovered))
        return self._release()

    def start(self, last: int) -> None:
        """The first join answered: ``last`` is the newest seq in its page, which the
        caller got as history; what was held back up to it is dropped."""
        self.last = last
        for seq in [s for s in self.held if s <= last]:
            del self.held[seq]

    def gap(self) -> tuple[int, int] | None:
        """``(before_seq, limit)`` of the ``chat:history`` call that fills the gap
        before the earliest held message, or ``None`` when nothing is missing."""
        if self.last is None or not self.held:
            return None
        first = min(self.held)
        return first, first - self.last - 1

    def _release(self) -> list[tuple[Message, bool]]:
        if self.last is None:
            return []
        out = []
        while self.last + 1 in self.held:
            self.last += 1
            out.append(self.held.pop(self.last))
        return out
