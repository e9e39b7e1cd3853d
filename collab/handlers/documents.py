"""``documents:*`` events.

Every change, whatever made it (``documents:update``, ``documents:yupdate``,
``documents:restore``, an update on the y-websocket endpoint), is one version made by
:meth:`LiveDocuments.change <collab.livedocs.LiveDocuments.change>` and announced by
:func:`announcer`: to the live members as ``documents:yupdate``, to the plain members
as ``documents:updated``, each in version order. Back to the connection that made it
only where it lacks the change: the sender of a Yjs update (``documents:yupdate``, the
y-websocket endpoint) has it, and a plain member gets the document in its ack, but a
live member's copy has no ``documents:update`` or ``documents:restore`` it made until
the update reaches it (a restore button in a live editor, web/).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .. import schemas
from ..broadcast.joins import READING
from ..errors import InvalidInput, NotFound, PayloadTooLarge
from ..permissions import require_document_role
from ..rooms import Room
from ..store.base import new_id
from ..ydoc import LiveDocument

if TYPE_CHECKING:
    from ..broadcast import Broadcasts
    from ..connection import Connection
    from ..livedocs import Change
    from .context import Context

#: a Yjs update (format v1) with nothing in it: the change of a v1 update that
#: replaces the content with the same content, which still makes a version
EMPTY_UPDATE = b"\x00\x00"


def room(document_id: str) -> Room:
    return Room.document(document_id)


def _check_size(ctx: Context, content: str) -> None:
    limit = ctx.settings.max_document_bytes
    # cheap bound first: a UTF-8 character takes at most 4 bytes
    if len(content) * 4 > limit and len(content.encode("utf-8")) > limit:
        raise PayloadTooLarge("Document content", limit)


def _limits(ctx: Context) -> dict[str, int]:
    return {"max_content_bytes": ctx.settings.max_document_bytes,
            "max_state_bytes": ctx.settings.max_document_state_bytes}


def announcer(broadcasts: Broadcasts, document_id: str, user_id: str, skip: str,
              *, sender_has_it: bool = True) -> Callable[[Change], Awaitable[None]]:
    """What tells the room of a change ``user_id`` made through the connection (or
    y-websocket socket) ``skip``: called in turn, see the module docstring.
    ``sender_has_it``: the change is the sender's own Yjs update, so its live copy has
    it; otherwise the live broadcast goes back to it too."""
    r = room(document_id)

    async def announce(change: Change) -> None:
        await broadcasts.publish_at(
            r.live, "documents:yupdate",
            {"document_id": document_id, "update": change.update, "version": change.version,
             "user_id": user_id},
            position=change.version, skip_sid=skip if sender_has_it else None)
        await broadcasts.publish_at(
            r.plain, "documents:updated", {"document": change.document, "user_id": user_id},
            position=change.version, skip_sid=skip)

    return announce


def _announcer(ctx: Context, conn: Connection, document_id: str,
               sender_has_it: bool = False) -> Callable[[Change], Awaitable[None]]:
    return announcer(ctx.broadcasts, document_id, conn.user_id, conn.sid,
                     sender_has_it=sender_has_it)


def _require_live(ctx: Context, conn: Connection, document_id: str) -> None:
    if not ctx.rooms.contains(conn.sid, room(document_id).live):
        raise InvalidInput("Join the document live first (documents:join with state_vector)")


# -- v1 ------------------------------------------------------------------------


async def create(ctx: Context, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
    _check_size(ctx, data["content"])
    initial = LiveDocument.new(data["content"], **_limits(ctx))
    document = await ctx.store.create_document(
        data.get("document_id") or new_id(), data["title"], data["content"], conn.user_id,
        state=initial.snapshot(),
    )
    return {"document": document}


async def share(ctx: Context, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
    document_id = data["document_id"]
    await require_document_role(ctx.store, conn.identity, document_id, "owner", conn.roles)
    if await ctx.store.get_document_role(document_id, data["user_id"]) == "owner":
        raise InvalidInput("The owner's role cannot be changed", {"user_id": ["Is the owner."]})
    if data["role"] is None:  # a revocation must reach every node, or not happen
        ctx.rooms.check_can_revoke()
    try:
        acl = await ctx.store.set_document_role(document_id, data["user_id"], data["role"])
    finally:  # (a downgrade too; and a write that failed may have landed all the same)
        ctx.rooms.forget_roles(room(document_id), data["user_id"])
    if data["role"] is None:  # a downgrade keeps read access, so it keeps the room
        await ctx.rooms.revoke(room(document_id), data["user_id"])
    return {"document_id": document_id, "acl": acl}


async def join(ctx: Context, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
    document_id = data["document_id"]
    await require_document_role(ctx.store, conn.identity, document_id, "viewer", conn.roles)
    state_vector = data.get("state_vector")
    r = room(document_id)
    sub = r.plain if state_vector is None else r.live

    async def load() -> dict[str, Any]:
        # again, now that the connection is in the room: a revocation since the
        # check above did not find it there to take it out
        # (from the store: the cache could have been filled by the first check)
        role = await require_document_role(ctx.store, conn.identity, document_id, "viewer")
        document = await ctx.store.get_document(document_id)
        if document is None:  # deleted underneath us
            raise NotFound(f"Document {document_id!r} not found")
        if state_vector is None:
            # (a lookup that may read a secondary: only what comes after it is skipped)
            ctx.broadcasts.covered(sub, conn.sid, document["version"])
            return {"document": document, "role": role}
        if ctx.rooms.alone_in(conn.sid, sub):  # the others' cursors reach this node from now
            await ctx.broadcasts.ask_awareness(sub)  # on; those set before, once asked
        async with ctx.documents.locked(document_id) as loaded:
            # everything stored so far, then sync step 2 from it
            await ctx.documents.catch_up(loaded)
            update = loaded.doc.diff(state_vector)
            # (with no await since the diff: nothing delivered here in between)
            ctx.broadcasts.covered(sub, conn.sid, loaded.version)
            document = {**document, "content": loaded.doc.content,
                        "version": loaded.version}
            return {"document": document, "role": role, "update": update,
                    "state_vector": loaded.doc.state_vector(),
                    "awareness": ctx.documents.awareness(document_id).encode_all()}

    if state_vector is not None:  # what reaches the room while the copy is read is in it
        ctx.broadcasts.covered(sub, conn.sid, READING)
    try:
        return await ctx.rooms.join(conn, r, load, sub=sub)
    except BaseException:
        ctx.broadcasts.covered(sub, conn.sid, None)
        raise


async def leave(ctx: Context, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
    await ctx.rooms.leave(conn, room(data["document_id"]))
    return {}


async def update(ctx: Context, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
    document_id = data["document_id"]
    content = data["content"]
    _check_size(ctx, content)
    await require_document_role(ctx.store, conn.identity, document_id, "editor", conn.roles)
    # the smallest edit from the content at version - 1 (v1 keeps its meaning: the same
    # content still makes a version)
    change = await ctx.documents.change(
        document_id, lambda doc: doc.replace_content(content) or EMPTY_UPDATE, conn.user_id,
        announce=_announcer(ctx, conn, document_id), expected_version=data["version"] - 1)
    assert change is not None  # (never None: an unchanged content is EMPTY_UPDATE)
    return {"document": change.document}


async def list_documents(ctx: Context, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
    limit = ctx.settings.page_limit(data.get("limit"))
    documents, after = await ctx.store.list_documents(conn.user_id, data.get("before"), limit)
    return {"documents": documents, **({"next": after} if after else {})}


# -- live (Yjs) ----------------------------------------------------------------


async def yupdate(ctx: Context, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
    document_id = data["document_id"]
    _require_live(ctx, conn, document_id)
    await require_document_role(ctx.store, conn.identity, document_id, "editor", conn.roles)
    incoming = data["update"]
    change = await ctx.documents.change(
        document_id, lambda doc: doc.apply(incoming), conn.user_id,
        announce=_announcer(ctx, conn, document_id, sender_has_it=True))
    if change is None:  # nothing the document had not seen: not stored, not broadcast
        loaded = await ctx.documents.get(document_id)
        return {"version": loaded.version}
    return {"version": change.version}


async def awareness(ctx: Context, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
    document_id = data["document_id"]
    _require_live(ctx, conn, document_id)
    await require_document_role(ctx.store, conn.identity, document_id, "viewer", conn.roles)
    accepted = ctx.documents.awareness(document_id).apply(conn.sid, data["update"],
                                                          user=conn.user_id)
    if accepted is not None:
        await ctx.broadcasts.send(
            room(document_id).live, "documents:awareness",
            {"document_id": document_id, "update": accepted}, skip_sid=conn.sid,
            sender=conn.user_id)
    return {}


# -- history -------------------------------------------------------------------


async def history(ctx: Context, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
    document_id = data["document_id"]
    await require_document_role(ctx.store, conn.identity, document_id, "viewer", conn.roles)
    limit = ctx.settings.page_limit(data.get("limit"))
    versions, has_more = await ctx.store.document_history(
        document_id, data.get("before_version"), limit)
    return {"versions": versions, "has_more": has_more}


async def _at_version(ctx: Context, document_id: str, version: int | None) -> dict[str, Any]:
    head = await ctx.store.get_document(document_id)
    if head is None:
        raise NotFound(f"Document {document_id!r} not found")
    if version is None or version == head["version"]:
        return head
    found = None if version > head["version"] else \
        await ctx.documents.content_at(document_id, version)
    if found is None:
        raise NotFound(f"Version {version} of document {document_id!r} is not kept")
    content, user_id, created_at = found
    return {**head, "content": content, "version": version, "updated_by": user_id,
            "updated_at": created_at}


async def get(ctx: Context, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
    document_id = data["document_id"]
    await require_document_role(ctx.store, conn.identity, document_id, "viewer", conn.roles)
    return {"document": await _at_version(ctx, document_id, data.get("version"))}


async def restore(ctx: Context, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
    document_id = data["document_id"]
    await require_document_role(ctx.store, conn.identity, document_id, "editor", conn.roles)
    old = (await _at_version(ctx, document_id, data["version"]))["content"]
    change = await ctx.documents.change(
        document_id, lambda doc: doc.replace_content(old), conn.user_id,
        announce=_announcer(ctx, conn, document_id), fresh=True)
    if change is None:  # the content is already that: no version
        return {"document": await _at_version(ctx, document_id, None)}
    return {"document": change.document}


EVENTS = {
    "documents:create": (schemas.DocumentCreate(), create),
    "documents:share": (schemas.DocumentShare(), share),
    "documents:join": (schemas.DocumentJoin(), join),
    "documents:leave": (schemas.DocumentRef(), leave),
    "documents:update": (schemas.DocumentUpdate(), update),
    "documents:list": (schemas.ListPage(), list_documents),
    "documents:yupdate": (schemas.DocumentYUpdate(), yupdate),
    "documents:awareness": (schemas.DocumentAwareness(), awareness),
    "documents:history": (schemas.DocumentHistory(), history),
    "documents:get": (schemas.DocumentGet(), get),
    "documents:restore": (schemas.DocumentRestore(), restore),
}
