"""``chat:*`` events."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from .. import schemas
from ..errors import NotFound, PayloadTooLarge
from ..permissions import require_chat_role
from ..store.base import new_id

if TYPE_CHECKING:
    from ..app import CollabApp, Connection


def room(chat_id: str) -> str:
    return f"chat_{chat_id}"


async def create(app: CollabApp, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
    chat = await app.store.create_chat(
        data.get("chat_id") or new_id(), data["title"], conn.user_id, data["members"]
    )
    return {"chat": chat}


async def invite(app: CollabApp, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
    await require_chat_role(app.store, conn.identity, data["chat_id"], "owner")
    chat = await app.store.add_chat_member(data["chat_id"], data["user_id"])
    return {"chat": chat}


async def join(app: CollabApp, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
    chat_id = data["chat_id"]
    await require_chat_role(app.store, conn.identity, chat_id, "member")
    since = data.get("since_seq")

    async def load() -> dict[str, Any]:
        chat = await app.store.get_chat(chat_id)
        if chat is None:
            raise NotFound(f"Chat {chat_id!r} not found")
        if since is None:
            messages, _ = await app.store.messages_before(
                chat_id, None, app.settings.history_limit)
        else:
            messages = await app.store.messages_after(chat_id, since, app.settings.history_max)
        return {"chat": chat, "messages": messages}

    return await app.join_room(conn, room(chat_id), {"chat_id": chat_id}, load)


async def leave(app: CollabApp, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
    await app.leave_room(conn, room(data["chat_id"]), {"chat_id": data["chat_id"]})
    return {}


async def message(app: CollabApp, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
    chat_id = data["chat_id"]
    limit = app.settings.max_message_chars
    if len(data["content"]) > limit:
        raise PayloadTooLarge("Message content", limit)
    await require_chat_role(app.store, conn.identity, chat_id, "member")
    # Store calls overlap and may complete out of seq order; the room's
    # sequencer sends the broadcasts in seq order all the same.
    with app.room_order.begin(room(chat_id)) as ticket:
        stored, created = await app.store.add_message(
            chat_id, conn.user_id, data["content"], data.get("client_id")
        )
        if created:  # a repeated client_id is neither stored nor broadcast again
            await ticket.release(stored["seq"], functools.partial(
                app.sio.emit, "chat:message", {"message": stored}, room=room(chat_id)))
    return {"message": stored}


async def history(app: CollabApp, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
    chat_id = data["chat_id"]
    await require_chat_role(app.store, conn.identity, chat_id, "member")
    limit = min(data.get("limit") or app.settings.history_limit, app.settings.history_max)
    messages, has_more = await app.store.messages_before(chat_id, data.get("before_seq"), limit)
    return {"messages": messages, "has_more": has_more}


async def typing(app: CollabApp, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
    chat_id = data["chat_id"]
    await require_chat_role(app.store, conn.identity, chat_id, "member")
    await app.sio.emit(
        "chat:typing",
        {"chat_id": chat_id, "user_id": conn.user_id, "typing": data["typing"]},
        room=room(chat_id),
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
