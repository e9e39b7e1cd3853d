"""``documents:*`` events."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import schemas
from ..errors import InvalidInput, NotFound, PayloadTooLarge
from ..permissions import require_document_role
from ..rooms import Room
from ..store.base import new_id

if TYPE_CHECKING:
    from ..connection import Connection
    from .context import Context


def room(document_id: str) -> Room:
    return Room.document(document_id)


def _check_size(ctx: Context, content: str) -> None:
    limit = ctx.settings.max_document_bytes
    # cheap bound first: a UTF-8 character takes at most 4 bytes
    if len(content) * 4 > limit and len(content.encode("utf-8")) > limit:
        raise PayloadTooLarge("Document content", limit)


async def create(ctx: Context, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
    _check_size(ctx, data["content"])
    document = await ctx.store.create_document(
        data.get("document_id") or new_id(), data["title"], data["content"], conn.user_id
    )
    return {"document": document}


async def share(ctx: Context, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
    document_id = data["document_id"]
    await require_document_role(ctx.store, conn.identity, document_id, "owner")
    if await ctx.store.get_document_role(document_id, data["user_id"]) == "owner":
        raise InvalidInput("The owner's role cannot be changed", {"user_id": ["Is the owner."]})
    if data["role"] is None:  # a revocation must reach every node, or not happen
        ctx.rooms.check_can_revoke()
    acl = await ctx.store.set_document_role(document_id, data["user_id"], data["role"])
    if data["role"] is None:  # a downgrade keeps read access, so it keeps the room
        await ctx.rooms.revoke(room(document_id), data["user_id"])
    return {"document_id": document_id, "acl": acl}


async def join(ctx: Context, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
    document_id = data["document_id"]
    await require_document_role(ctx.store, conn.identity, document_id, "viewer")

    async def load() -> dict[str, Any]:
        # again, now that the connection is in the room: a revocation since the
        # check above did not find it there to take it out
        await require_document_role(ctx.store, conn.identity, document_id, "viewer")
        document = await ctx.store.get_document(document_id)
        if document is None:  # deleted underneath us
            raise NotFound(f"Document {document_id!r} not found")
        return {"document": document}

    return await ctx.rooms.join(conn, room(document_id), load)


async def leave(ctx: Context, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
    await ctx.rooms.leave(conn, room(data["document_id"]))
    return {}


async def update(ctx: Context, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
    document_id = data["document_id"]
    _check_size(ctx, data["content"])
    await require_document_role(ctx.store, conn.identity, document_id, "editor")
    # Two updates' store calls can complete in either order (MongoDB's can):
    # the broadcasts still leave in version order.
    with ctx.broadcasts.in_order(room(document_id)) as slot:
        document = await ctx.store.update_document(
            document_id, data["content"], data["version"], conn.user_id
        )
        await slot.publish("documents:updated", {"document": document, "user_id": conn.user_id},
                           position=document["version"], skip_sid=conn.sid)
    return {"document": document}


async def list_documents(ctx: Context, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
    limit = min(data.get("limit") or ctx.settings.history_limit, ctx.settings.history_max)
    documents, after = await ctx.store.list_documents(conn.user_id, data.get("before"), limit)
    return {"documents": documents, **({"next": after} if after else {})}


EVENTS = {
    "documents:create": (schemas.DocumentCreate(), create),
    "documents:share": (schemas.DocumentShare(), share),
    "documents:join": (schemas.DocumentRef(), join),
    "documents:leave": (schemas.DocumentRef(), leave),
    "documents:update": (schemas.DocumentUpdate(), update),
    "documents:list": (schemas.ListPage(), list_documents),
}
