"""``chat:*`` events."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import schemas
from ..errors import NotFound, PayloadTooLarge
from ..packet import SafeJSON
from ..permissions import require_chat_role
from ..pipeline import current_turn
from ..rooms import Room
from ..store.base import Message, new_id

if TYPE_CHECKING:
    from ..connection import Connection
    from .context import Context


def room(chat_id: str) -> Room:
    return Room.chat(chat_id)


async def create(ctx: Context, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
    chat = await ctx.store.create_chat(
        data.get("chat_id") or new_id(), data["title"], conn.user_id, data["members"]
    )
    return {"chat": chat}


async def invite(ctx: Context, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
    await require_chat_role(ctx.store, conn.identity, data["chat_id"], "owner", conn.roles)
    chat = await ctx.store.add_chat_member(data["chat_id"], data["user_id"])
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


async def join(ctx: Context, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
    chat_id = data["chat_id"]
    await require_chat_role(ctx.store, conn.identity, chat_id, "member", conn.roles)
    since = data.get("since_seq")
    max_bytes = ctx.settings.history_page_bytes

    async def load() -> dict[str, Any]:
        chat = await ctx.store.get_chat(chat_id)
        if chat is None:
            raise NotFound(f"Chat {chat_id!r} not found")
        if since is None:  # the latest page; has_more: older messages exist
            messages, older = await ctx.store.messages_before(
                chat_id, None, ctx.settings.history_limit)
            messages, cut = _within(messages, max_bytes, newest=True)
            has_more = older or cut
        else:  # the oldest after since_seq; has_more: newer ones exist beyond the page
            limit = ctx.settings.history_max
            found = await ctx.store.messages_after(chat_id, since, limit + 1)  # +1: any more?
            messages, cut = _within(found[:limit], max_bytes, newest=False)
            has_more = cut or len(found) > limit
        return {"chat": chat, "messages": messages, "has_more": has_more}

    return await ctx.rooms.join(conn, room(chat_id), load)


async def leave(ctx: Context, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
    await ctx.rooms.leave(conn, room(data["chat_id"]))
    return {}


async def message(ctx: Context, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
    chat_id = data["chat_id"]
    limit = ctx.settings.max_message_chars
    if len(data["content"]) > limit:
        raise PayloadTooLarge("Message content", limit)
    await require_chat_role(ctx.store, conn.identity, chat_id, "member", conn.roles)
    # one connection's messages may be in the store together (collab/pipeline.py):
    # each takes its place after the one sent before it
    turn = current_turn()
    await turn.wait_to_place()
    # Store calls overlap and may complete out of seq order; the broadcasts
    # leave in seq order all the same.
    with ctx.broadcasts.in_order(room(chat_id)) as slot:
        adding = ctx.store.add_message(
            chat_id, conn.user_id, data["content"], data.get("client_id")
        )
        turn.placed()  # (the store queues the write in the await's first step)
        stored, created = await adding
        if created:  # a repeated client_id is neither stored nor broadcast again
            await slot.publish("chat:message", {"message": stored}, position=stored["seq"])
    return {"message": stored}


async def history(ctx: Context, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
    chat_id = data["chat_id"]
    await require_chat_role(ctx.store, conn.identity, chat_id, "member", conn.roles)
    limit = ctx.settings.page_limit(data.get("limit"))
    messages, older = await ctx.store.messages_before(chat_id, data.get("before_seq"), limit)
    messages, cut = _within(messages, ctx.settings.history_page_bytes, newest=True)
    return {"messages": messages, "has_more": older or cut}


async def typing(ctx: Context, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
    chat_id = data["chat_id"]
    await require_chat_role(ctx.store, conn.identity, chat_id, "member", conn.roles)
    await ctx.broadcasts.send(
        room(chat_id),
        "chat:typing",
        {"chat_id": chat_id, "user_id": conn.user_id, "typing": data["typing"]},
        skip_sid=conn.sid,
    )
    return {}


async def list_chats(ctx: Context, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
    limit = ctx.settings.page_limit(data.get("limit"))
    chats, after = await ctx.store.list_chats(conn.user_id, data.get("before"), limit)
    return {"chats": chats, **({"next": after} if after else {})}


EVENTS = {
    "chat:create": (schemas.ChatCreate(), create),
    "chat:invite": (schemas.ChatInvite(), invite),
    "chat:join": (schemas.ChatJoin(), join),
    "chat:leave": (schemas.ChatRef(), leave),
    "chat:message": (schemas.ChatMessage(), message),
    "chat:history": (schemas.ChatHistory(), history),
    "chat:typing": (schemas.ChatTyping(), typing),
    "chat:list": (schemas.ListPage(), list_chats),
}
