"""What was joined, and getting it back after a reconnect without losing or repeating.

Each kind of room is tracked by a :class:`Rooms`: it sees every call and its ack
(to learn what was joined and left), every server event before the handlers do
(to drop what was delivered already and order the rest), and after each
(re)connect it re-joins and delivers what was missed. All of it runs in the
dispatcher, so recovered and live events never interleave wrongly.

The manager runs its trackers in a fixed order. The live-document bindings
(:mod:`.live`) are one more tracker: they get acked calls (``call``), the server's
events in order (``on_event``), the loss of the connection (``lost``, to stop
sending) and, after every reconnect, ``resume`` to resync their state.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from .calls import unwrap
from .errors import CollabError
from .feed import ChatFeed, Message

log = logging.getLogger("collab.client")

#: an acked call: ``call(event, data)`` returns the raw ack
Call = Callable[[str, Any], Awaitable[Any]]
#: hand an event to the user's handlers: ``deliver(event, data)``
Deliver = Callable[[str, Any], Awaitable[None]]
Undo = Callable[[], None]

#: re-join failures that mean "forget this room" rather than "try the reconnect again"
PERMANENT = ("NOT_FOUND", "PERMISSION_DENIED", "INVALID_INPUT")


class Rooms(Protocol):
    """One kind of room the manager keeps joined across reconnects."""

    @property
    def tracked(self) -> bool:
        """Whether anything would be re-joined (or is being joined)."""

    @property
    def joined(self) -> list[str]:
        """The ids a reconnection re-joins."""

    def before_emit(self, event: str, data: Any) -> Undo | None:
        """Before a call is sent; the undo runs if the call then fails. Raising refuses
        the call (nothing is sent)."""

    async def after_ack(self, event: str, data: Any, ack: Any) -> None:
        """As the call's ack arrives, in the dispatcher."""

    async def on_event(self, event: str, data: Any) -> bool:
        """A server event, in the dispatcher: True if dealt with here (delivered in
        order, held back, or dropped as seen), False to deliver it as it is."""

    def lost(self) -> None:
        """The connection just went down (called at once, outside the dispatcher)."""

    async def resume(self) -> None:
        """After a (re)connect: re-join and deliver what was missed. Raising fails the
        attempt (the manager drops the connection and tries again)."""

    def clear(self) -> None:
        """Forget everything: ``disconnect()`` was called."""


class DocumentRooms:
    """Joined documents and the last version delivered of each."""

    def __init__(self, call: Call, deliver: Deliver) -> None:
        self._call = call
        self._deliver = deliver
        self._versions: dict[str, int] = {}  # document id -> last version seen

    @property
    def tracked(self) -> bool:
        return bool(self._versions)

    @property
    def joined(self) -> list[str]:
        return list(self._versions)

    def before_emit(self, event: str, data: Any) -> Undo | None:
        return None

    async def after_ack(self, event: str, data: Any, ack: Any) -> None:
        if field(ack, "ok") is not True:
            return
        if event == "documents:join":
            document = ack["document"]
            self._versions[document["id"]] = document["version"]
        elif event == "documents:leave":
            self._versions.pop(field(data, "document_id"), None)
        elif event == "documents:update":
            document = ack["document"]
            if document["id"] in self._versions:
                self._versions[document["id"]] = max(
                    self._versions[document["id"]], document["version"])

    async def on_event(self, event: str, data: Any) -> bool:
        if event != "documents:updated":
            return False
        document = field(data, "document")
        document_id = field(document, "id")
        if document_id not in self._versions:
            return False
        if document["version"] <= self._versions[document_id]:
            return True  # seen already (delivered by the recovery, or our own update)
        self._versions[document_id] = document["version"]
        return False

    def lost(self) -> None:
        return None

    async def resume(self) -> None:
        for document_id in list(self._versions):
            await self._rejoin(document_id)

    def clear(self) -> None:
        self._versions.clear()

    async def _rejoin(self, document_id: str) -> None:
        known = self._versions[document_id]
        ack = await self._call("documents:join", {"document_id": document_id})
        if forgotten(ack):
            self._versions.pop(document_id, None)
            return
        document = unwrap(ack)["document"]
        self._versions[document_id] = document["version"]
        if document["version"] != known:
            await self._deliver("documents:updated",
                                {"document": document, "user_id": None, "recovered": True})


class ChatRooms:
    """Joined chats, each with its :class:`ChatFeed`: every message once, in seq order."""

    def __init__(self, call: Call, deliver: Deliver) -> None:
        self._call = call
        self._deliver = deliver
        self._feeds: dict[str, ChatFeed] = {}

    @property
    def tracked(self) -> bool:
        return bool(self._feeds)

    @property
    def joined(self) -> list[str]:
        return [chat_id for chat_id, feed in self._feeds.items() if not feed.joining]

    def before_emit(self, event: str, data: Any) -> Undo | None:
        """A first ``chat:join``: hold its broadcasts back until the ack says where
        the history ends."""
        chat_id = field(data, "chat_id")
        if event != "chat:join" or chat_id is None or chat_id in self._feeds:
            return None
        feed = self._feeds[chat_id] = ChatFeed()

        def undo() -> None:
            if self._feeds.get(chat_id) is feed and feed.joining:
                del self._feeds[chat_id]

        return undo

    async def after_ack(self, event: str, data: Any, ack: Any) -> None:
        ok = field(ack, "ok") is True
        chat_id = field(data, "chat_id")
        if event == "chat:leave" and ok:
            self._feeds.pop(chat_id, None)
        if event != "chat:join":
            return
        feed = self._feeds.get(chat_id) if chat_id else None
        if feed is None:
            return
        if not ok:
            if feed.joining:
                del self._feeds[chat_id]
            return
        messages = ack.get("messages") or []
        if feed.joining:  # the page is history, returned to the caller; live starts after
            since = field(data, "since_seq")
            feed.start(max((m["seq"] for m in messages), default=since or 0))
            await self._offer(chat_id, feed, [], recovered=False)
        else:
            await self._offer(chat_id, feed, messages, recovered=True)

    async def on_event(self, event: str, data: Any) -> bool:
        if event != "chat:message":
            return False
        message = field(data, "message")
        feed = self._feeds.get(field(message, "chat_id"))
        if feed is None:
            return False
        if feed.joining:
            feed.offer([message], recovered=False)
        else:
            await self._offer(message["chat_id"], feed, [message], recovered=False)
        return True

    def lost(self) -> None:
        return None

    async def resume(self) -> None:
        for chat_id, feed in list(self._feeds.items()):
            if not feed.joining:
                await self._rejoin(chat_id, feed)

    def clear(self) -> None:
        self._feeds.clear()

    async def _rejoin(self, chat_id: str, feed: ChatFeed) -> None:
        ack = await self._call("chat:join", {"chat_id": chat_id, "since_seq": feed.last})
        if forgotten(ack):
            self._feeds.pop(chat_id, None)
            return
        messages = unwrap(ack)["messages"]
        await self._offer(chat_id, feed, messages, recovered=True)
        if messages:
            # the page may have been cut at the server's limit: the newest message tells
            latest = unwrap(await self._call("chat:history", {"chat_id": chat_id, "limit": 1}))
            await self._offer(chat_id, feed, latest["messages"], recovered=True)

    async def _offer(self, chat_id: str, feed: ChatFeed, messages: list[Message],
                     recovered: bool) -> None:
        """Deliver what is now in order; fetch a gap with ``chat:history`` if one remains."""
        await self._release(feed.offer(messages, recovered))
        while self._feeds.get(chat_id) is feed and (gap := feed.gap()) is not None:
            before_seq, limit = gap
            try:
                page = await self._call("chat:history", {"chat_id": chat_id,
                                                         "before_seq": before_seq,
                                                         "limit": limit})
            except CollabError:
                return  # held back; the recovery after the reconnect fills it
            if not page.get("ok") or not page["messages"]:
                return
            await self._release(feed.offer(page["messages"], recovered=True))

    async def _release(self, messages: list[tuple[Message, bool]]) -> None:
        for message, recovered in messages:
            payload: dict[str, Any] = {"message": message}
            if recovered:
                payload["recovered"] = True
            await self._deliver("chat:message", payload)


def forgotten(ack: Any) -> bool:
    """A re-join refused for good: the room is gone or the user may no longer enter."""
    return field(ack, "ok") is False and field(field(ack, "error"), "code") in PERMANENT


def field(data: Any, key: str) -> Any:
    return data.get(key) if isinstance(data, dict) else None
