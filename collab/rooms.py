"""Rooms: where a document's or a chat's broadcasts go.

A room is named ``<kind>_<id>`` on the wire and in python-socketio and Redis
(``document_report``, ``chat_general``); presence events name it by subject
(``{"document_id": "report"}``). :class:`Room` is the one place that builds
and parses those, so no other module splits strings on ``_``.

A document's members are in its room (presence) and in one of two sub-rooms by
how they follow changes: ``document_<id>#live`` (Yjs updates and awareness) or
``document_<id>#plain`` (v1: the whole document). Ids never hold ``#``.
"""

from __future__ import annotations

import dataclasses

#: the kinds of room, as the protocol names them
KINDS = ("document", "chat")
#: how a document's member follows its changes (the sub-rooms)
LIVE, PLAIN = "live", "plain"
MODES = (LIVE, PLAIN)


@dataclasses.dataclass(frozen=True, slots=True)
class Room:
    kind: str
    id: str
    #: a document's sub-room (LIVE or PLAIN); "" for the room itself
    mode: str = ""

    @classmethod
    def document(cls, document_id: str) -> Room:
        return cls("document", document_id)

    @classmethod
    def chat(cls, chat_id: str) -> Room:
        return cls("chat", chat_id)

    @classmethod
    def parse(cls, name: object) -> Room | None:
        """The room a python-socketio room name stands for; None for any other name
        (python-socketio also keeps one room per connection, named by its sid)."""
        if not isinstance(name, str):
            return None
        name, hash_, mode = name.partition("#")
        kind, sep, rid = name.partition("_")
        if not sep or not rid or kind not in KINDS:
            return None
        if hash_ and (kind != "document" or mode not in MODES):
            return None
        return cls(kind, rid, mode)

    @property
    def name(self) -> str:
        """The room's name in python-socketio, Redis and the protocol."""
        base = f"{self.kind}_{self.id}"
        return f"{base}#{self.mode}" if self.mode else base

    @property
    def live(self) -> Room:
        """A document's sub-room of live (Yjs) members."""
        return Room(self.kind, self.id, LIVE)

    @property
    def plain(self) -> Room:
        """A document's sub-room of plain (v1) members."""
        return Room(self.kind, self.id, PLAIN)

    @property
    def whole(self) -> Room:
        """The room a sub-room belongs to (itself for a room)."""
        return Room(self.kind, self.id) if self.mode else self

    @property
    def subject(self) -> dict[str, str]:
        """How presence events and errors name it: ``{"document_id": id}``."""
        return {f"{self.kind}_id": self.id}

    def presence(self, user_id: str) -> dict[str, str]:
        """The payload of ``user:joined`` / ``user:left`` for ``user_id`` in this room."""
        return {"user_id": user_id, **self.subject}

    def __str__(self) -> str:
        return self.name
