"""``chat:*`` events."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from .. import schemas
from ..errors import NotFound, PayloadTooLarge
from ..packet import SafeJSON
from ..permissions import require_chat_role
from ..rooms import Room
from ..store.base import Message, new_id

if TYPE_CHECKING:
    from ..app import CollabApp, Connection


def room(chat_id: str) -> Room:
    return Room.chat(chat_id)


async def create(app: CollabApp, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
    chat = await app.store.create_chat(
        data.get("chat_id") or new_id(), data["title"], conn.user_id, data["members"]
    )
    return {"chat": chat}


async def invite(app: CollabApp, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
    await require_chat_role(app.store, conn.identity, data["chat_id"], "owner")
    chat = await app.store.add_chat_member(data["chat_id"], data["user_id"])
    return {"chat": chat}


# Pages are bounded by bytes here rather than in the stores: what a message costs is
# its encoding in a packet (JSON escapes, UTF-8), which only this layer knows, and
# one implementation serves every backend. The store still reads at most a count
# page (history_max messages), so the read is bounded too.


def _size_bound(message: Message) -> int:
    """No less than the bytes ``message`` takes in a packet, from its lengths alone:
    JSON in UTF-8 spells no character in more than 6 bytes (``\\u001f``), and the
    keys, quotes and the seq take less than 128."""
    return 128 + 6 * sum(len(v) for v in message.values() if isinstance(v, str))


def _encoded_size(message: Message) -> int:
    """The bytes ``message`` takes in a packet, encoded as the server sends it."""
    return len(SafeJSON.dumps(message, separators=(",", ":")).encode("utf-8"))


def _within(messages: list[Message], max_bytes: int, newest: bool) -> tuple[list[Message], bool]:
    """The messages (oldest first) that fit in ``max_bytes`` as the page's JSON array,
    kept from the newest end or the oldest, and whether any were left out. At least
    one is kept, whatever its size, so a page always makes progress."""
    if sum(map(_size_bound, messages)) <= max_bytes:  # the common case: no encoding
        return messages, False
    total, kept = 1, 0  # the bytes of the messages as a JSON array: [m1,m2]
    for message in reversed(messages) if newest else messages:
        total += _encoded_size(message) + 1
        if total > max_bytes and kept:
            break
        kept += 1
    if kept == len(messages):
        return messages, False
    return (messages[-kept:] if newest else messages[:kept]), True


async def join(app: CollabApp, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
    chat_id = data["chat_id"]
    await require_chat_role(app.store, conn.identity, chat_id, "member")
    since = data.get("since_seq")
    max_bytes = app.settings.history_page_bytes

    async def load() -> dict[str, Any]:
        chat = await app.store.get_chat(chat_id)
        if chat is None:
            raise NotFound(f"Chat {chat_id!r} not found")
        if since is None:  # the latest page; has_more: older messages exist
            messages, older = await app.store.messages_before(
                chat_id, None, app.settings.history_limit)
            messages, cut = _within(messages, max_bytes, newest=True)
            has_more = older or cut
        else:  # the oldest after since_seq; has_more: newer ones exist beyond the page
            limit = app.settings.history_max
            found = await app.store.messages_after(chat_id, since, limit + 1)  # +1: any more?
            messages, cut = _within(found[:limit], max_bytes, newest=False)
            has_more = cut or len(found) > limit
        return {"chat": chat, "messages": messages, "has_more": has_more}

    return await app.join_room(conn, room(chat_id), load)


async def leave(app: CollabApp, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
    await app.leave_room(conn, room(data["chat_id"]))
    return {}


async def message(app: CollabApp, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
    chat_id = data["chat_id"]
    limit = app.settings.max_message_chars
    if len(data["content"]) > limit:
        raise PayloadTooLarge("Message content", limit)
    await require_chat_role(app.store, conn.identity, chat_id, "member")
    # Store calls overlap and may complete out of seq order; the room's
    # sequencer sends the broadcasts in seq order all the same.
    with app.room_order.begin(room(chat_id).name) as ticket:
        stored, created = await app.store.add_message(
            chat_id, conn.user_id, data["content"], data.get("client_id")
        )
        if created:  # a repeated client_id is neither stored nor broadcast again
            await ticket.release(stored["seq"], functools.partial(
                app.broadcast, "chat:message", {"message": stored}, room(chat_id)))
    return {"message": stored}


async def history(app: CollabApp, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
    chat_id = data["chat_id"]
    await require_chat_role(app.store, conn.identity, chat_id, "member")
    limit = min(data.get("limit") or app.settings.history_limit, app.settings.history_max)
    messages, older = await app.store.messages_before(chat_id, data.get("before_seq"), limit)
    messages, cut = _within(messages, app.settings.history_page_bytes, newest=True)
    return {"messages": messages, "has_more": older or cut}


async def typing(app: CollabApp, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
    chat_id = data["chat_id"]
    await require_chat_role(app.store, conn.identity, chat_id, "member")
    await app.broadcast(
        "chat:typing",
        {"chat_id": chat_id, "user_id": conn.user_id, "typing": data["typing"]},
        room(chat_id),
        skip_sid=conn.sid,
    )
    return {}


EVENTS = {
    "chat:create": (schemas.ChatCreate(), create),
    "chat:invite": (schemas.ChatInvite(), invite),
    "chat:join": (schemas.ChatJoin(), join),
    "chat:leave": (schemas.ChatRef(), leave),
    "chat:message": (schemas.ChatMessage(), message),
    "chat:history": (schemas.ChatHistory(), history),
    "chat:typing": (schemas.ChatTyping(), typing),
}
