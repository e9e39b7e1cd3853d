"""MongoDB storage on PyMongo's native asyncio client.

Layout (database from the URL path, default ``collab``):

- ``documents``: ``{_id, title, content, version, created_by, created_at,
  updated_by, updated_at, acl: {<key>: role}}``. Roles live in the document so
  a grant or revoke is one atomic ``$set``/``$unset`` and a role check is one
  read by ``_id``.
- ``chats``: ``{_id, title, created_by, created_at, members: [...],
  roles: {<key>: role}}``; adding a member pushes to ``members`` and sets its
  role in the same update.
- ``messages``: ``{_id, chat_id, seq, user_id, content, created_at,
  client_id?}`` with unique ``(chat_id, seq)`` and unique ``(chat_id, user_id,
  client_id)`` over the messages that have a ``client_id``.

User ids become map keys through :func:`_key`: ids may contain ``.`` (a path
separator in updates) or look numeric, so keys are escaped and prefixed.

Timestamps are stored as the protocol's ISO strings, so records come back in
exactly the shape they went in. Connection trouble surfaces as
:class:`~collab.errors.Unavailable`; the client reconnects on its own when the
server returns.
"""

from __future__ import annotations

import functools
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel, ReturnDocument
from pymongo.errors import ConnectionFailure, DuplicateKeyError, PyMongoError
from pymongo.read_preferences import ReadPreference

from collab.errors import AlreadyExists, NotFound, Unavailable, VersionConflict
from collab.locks import KeyedLocks
from collab.store.base import Chat, Document, Message, Store, new_id, now_iso
from collab.urls import redacted

DEFAULT_DATABASE = "collab"

#: How often add_message tries the next seq after losing a race for one.
MAX_SEQ_ATTEMPTS = 1000

_T = TypeVar("_T")

_READ_PREFERENCES = {
    "primary": ReadPreference.PRIMARY,
    "primarypreferred": ReadPreference.PRIMARY_PREFERRED,
    "secondary": ReadPreference.SECONDARY,
    "secondarypreferred": ReadPreference.SECONDARY_PREFERRED,
    "nearest": ReadPreference.NEAREST,
}


def _is_outage(exc: PyMongoError) -> bool:
    # ConnectionFailure covers AutoReconnect, NetworkTimeout, NotPrimaryError,
    # ServerSelectionTimeoutError and WaitQueueTimeoutError; ``timeout`` marks
    # the remaining operation timeouts.
    return isinstance(exc, ConnectionFailure) or bool(getattr(exc, "timeout", False))


def _translate_outages(
    fn: Callable[..., Awaitable[_T]],
) -> Callable[..., Awaitable[_T]]:
    """Turn a lost or unreachable server into :class:`Unavailable`."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> _T:
        try:
            return await fn(*args, **kwargs)
        except PyMongoError as exc:
            if _is_outage(exc):
                raise Unavailable() from exc
            raise

    return wrapper


def _key(user_id: str) -> str:
    """A map key for ``user_id`` that is safe in update paths and never numeric."""
    escaped = (
        user_id.replace("%", "%25").replace(".", "%2E").replace("$", "%24").replace("\0", "%00")
    )
    return "u_" + escaped


def _user_id(key: str) -> str:
    return urllib.parse.unquote(key[2:])


def _roles(stored: dict[str, str] | None) -> dict[str, str]:
    return {_user_id(key): role for key, role in (stored or {}).items()}


def _document(raw: dict[str, Any]) -> Document:
    return {
        "id": raw["_id"],
        "title": raw["title"],
        "content": raw["content"],
        "version": raw["version"],
        "created_by": raw["created_by"],
        "created_at": raw["created_at"],
        "updated_by": raw["updated_by"],
        "updated_at": raw["updated_at"],
    }


def _chat(raw: dict[str, Any]) -> Chat:
    return {
        "id": raw["_id"],
        "title": raw["title"],
        "created_by": raw["created_by"],
        "created_at": raw["created_at"],
        "members": list(raw["members"]),
    }


def _message(raw: dict[str, Any]) -> Message:
    message = {
        "id": raw["_id"],
        "chat_id": raw["chat_id"],
        "seq": raw["seq"],
        "user_id": raw["user_id"],
        "content": raw["content"],
        "created_at": raw["created_at"],
    }
    if raw.get("client_id") is not None:
        message["client_id"] = raw["client_id"]
    return message


class MongoStore(Store):
    """Documents, chats and messages in MongoDB 6+ (standalone, replica set or sharded)."""

    def __init__(
        self,
        url: str,
        *,
        server_selection_timeout_ms: int = 2000,
        connect_timeout_ms: int | None = None,
        socket_timeout_ms: int = 10000,
        write_concern: str | int | None = None,
        read_preference: str | None = None,
        **_: Any,
    ) -> None:
        self.url = url
        self.display_url = redacted(url)
        self._chat_locks = KeyedLocks()
        self._client_options: dict[str, Any] = {
            "serverSelectionTimeoutMS": server_selection_timeout_ms,
            "connectTimeoutMS": connect_timeout_ms or server_selection_timeout_ms,
            "socketTimeoutMS": socket_timeout_ms,
        }
        if write_concern is not None:
            self._client_options["w"] = write_concern
        # an option the connection string sets itself wins over these defaults (PyMongo
        # would let a keyword argument override it, silently)
        in_url = {key.lower() for key, _ in urllib.parse.parse_qsl(url.partition("?")[2])}
        self._client_options = {
            key: value for key, value in self._client_options.items()
            if key.lower() not in in_url
        }
        # Only plain lookups may go to secondaries; reads that decide a write
        # (the next seq, a retried client_id, a conflict's current document)
        # always go to the primary. None keeps the URL's readPreference.
        self._read_preference: Any = None
        if read_preference:
            try:
                self._read_preference = _READ_PREFERENCES[read_preference.lower()]
            except KeyError:
                raise ValueError(f"unknown read preference {read_preference!r}") from None
        self._client: AsyncMongoClient[dict[str, Any]] | None = None

    # -- lifecycle ---------------------------------------------------------

    @_translate_outages
    async def open(self) -> None:
        if self._client is None:
            self._client = AsyncMongoClient(self.url, **self._client_options)
            db = self._client.get_default_database(DEFAULT_DATABASE)
            # writes, and the reads that decide them, use the primary even
            # when the URL asks for another read preference
            primary = db.with_options(read_preference=ReadPreference.PRIMARY)
            self._documents = primary.documents
            self._chats = primary.chats
            self._messages = primary.messages
            reads = (
                db.with_options(read_preference=self._read_preference)
                if self._read_preference is not None
                else db
            )
            self._documents_read = reads.documents
            self._chats_read = reads.chats
            self._messages_read = reads.messages
        # Documents and chats are unique by _id. The seq index also serves
        # history reads in either direction, so there is no separate
        # (chat_id, seq desc) index.
        await self._messages.create_indexes(
            [
                IndexModel(
                    [("chat_id", ASCENDING), ("seq", ASCENDING)], name="chat_seq", unique=True
                ),
                IndexModel(
                    [("chat_id", ASCENDING), ("user_id", ASCENDING), ("client_id", ASCENDING)],
                    name="chat_user_client_id",
                    unique=True,
                    partialFilterExpression={"client_id": {"$type": "string"}},
                ),
            ]
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()

    @_translate_outages
    async def ping(self) -> None:
        if self._client is None:
            raise Unavailable("The store is not open")
        await self._client.admin.command("ping")

    # -- documents ---------------------------------------------------------

    @_translate_outages
    async def create_document(
        self, document_id: str, title: str, content: str, user_id: str
    ) -> Document:
        now = now_iso()
        raw = {
            "_id": document_id,
            "title": title,
            "content": content,
            "version": 0,
            "created_by": user_id,
            "created_at": now,
            "updated_by": user_id,
            "updated_at": now,
            "acl": {_key(user_id): "owner"},
        }
        try:
            await self._documents.insert_one(raw)
        except DuplicateKeyError:
            raise AlreadyExists(f"Document {document_id!r} already exists") from None
        return _document(raw)

    @_translate_outages
    async def get_document(self, document_id: str) -> Document | None:
        raw = await self._documents_read.find_one({"_id": document_id}, {"acl": 0})
        return _document(raw) if raw else None

    @_translate_outages
    async def update_document(
        self, document_id: str, content: str, version: int, user_id: str
    ) -> Document:
        raw = await self._documents.find_one_and_update(
            {"_id": document_id, "version": version - 1},
            {
                "$set": {
                    "content": content,
                    "version": version,
                    "updated_by": user_id,
                    "updated_at": now_iso(),
                }
            },
            projection={"acl": 0},
            return_document=ReturnDocument.AFTER,
        )
        if raw is not None:
            return _document(raw)
        current = await self._documents.find_one({"_id": document_id}, {"acl": 0})
        if current is None:
            raise NotFound(f"Document {document_id!r} not found")
        raise VersionConflict(_document(current))

    @_translate_outages
    async def get_document_role(self, document_id: str, user_id: str) -> str | None:
        # The whole (small) acl map rather than ``acl.<key>``: nx-27017 returns
        # dotted projections flat, and the map costs the same single read.
        raw = await self._documents_read.find_one({"_id": document_id}, {"acl": 1})
        if raw is None:
            return None
        return (raw.get("acl") or {}).get(_key(user_id))

    @_translate_outages
    async def set_document_role(
        self, document_id: str, user_id: str, role: str | None
    ) -> dict[str, str]:
        path = "acl." + _key(user_id)
        update = {"$unset": {path: ""}} if role is None else {"$set": {path: role}}
        raw = await self._documents.find_one_and_update(
            {"_id": document_id},
            update,
            projection={"acl": 1},
            return_document=ReturnDocument.AFTER,
        )
        if raw is None:
            raise NotFound(f"Document {document_id!r} not found")
        return _roles(raw.get("acl"))

    @_translate_outages
    async def get_document_acl(self, document_id: str) -> dict[str, str]:
        raw = await self._documents_read.find_one({"_id": document_id}, {"acl": 1})
        return _roles(raw.get("acl")) if raw else {}

    # -- chats -------------------------------------------------------------

    @_translate_outages
    async def create_chat(self, chat_id: str, title: str, user_id: str, members: list[str]) -> Chat:
        ordered = [user_id]
        for member in members:
            if member not in ordered:
                ordered.append(member)
        raw = {
            "_id": chat_id,
            "title": title,
            "created_by": user_id,
            "created_at": now_iso(),
            "members": ordered,
            "roles": {_key(m): ("owner" if m == user_id else "member") for m in ordered},
        }
        try:
            await self._chats.insert_one(raw)
        except DuplicateKeyError:
            raise AlreadyExists(f"Chat {chat_id!r} already exists") from None
        return _chat(raw)

    @_translate_outages
    async def get_chat(self, chat_id: str) -> Chat | None:
        raw = await self._chats_read.find_one({"_id": chat_id}, {"roles": 0})
        return _chat(raw) if raw else None

    @_translate_outages
    async def add_chat_member(self, chat_id: str, user_id: str) -> Chat:
        key = _key(user_id)
        raw = await self._chats.find_one_and_update(
            {"_id": chat_id, "roles." + key: {"$exists": False}},
            {"$push": {"members": user_id}, "$set": {"roles." + key: "member"}},
            projection={"roles": 0},
            return_document=ReturnDocument.AFTER,
        )
        if raw is None:  # already a member, or no such chat
            raw = await self._chats.find_one({"_id": chat_id}, {"roles": 0})
            if raw is None:
                raise NotFound(f"Chat {chat_id!r} not found")
        return _chat(raw)

    @_translate_outages
    async def get_chat_role(self, chat_id: str, user_id: str) -> str | None:
        raw = await self._chats_read.find_one({"_id": chat_id}, {"roles": 1})
        if raw is None:
            return None
        return (raw.get("roles") or {}).get(_key(user_id))

    # -- messages ----------------------------------------------------------

    async def _by_client_id(self, chat_id: str, user_id: str, client_id: str) -> Message | None:
        raw = await self._messages.find_one(
            {"chat_id": chat_id, "user_id": user_id, "client_id": client_id}
        )
        return _message(raw) if raw else None

    @_translate_outages
    async def add_message(
        self, chat_id: str, user_id: str, content: str, client_id: str | None = None
    ) -> tuple[Message, bool]:
        # One insert per chat at a time from this node: concurrent ones would all
        # read the same last seq and retry on the unique index, one by one.
        async with self._chat_locks[chat_id]:
            return await self._add_message(chat_id, user_id, content, client_id)

    async def _add_message(
        self, chat_id: str, user_id: str, content: str, client_id: str | None
    ) -> tuple[Message, bool]:
        if client_id is not None:
            stored = await self._by_client_id(chat_id, user_id, client_id)
            if stored is not None:
                return stored, False
        last = await self._messages.find_one(
            {"chat_id": chat_id}, {"seq": 1, "_id": 0}, sort=[("seq", DESCENDING)]
        )
        seq = last["seq"] + 1 if last else 1
        raw: dict[str, Any] = {
            "_id": new_id(),
            "chat_id": chat_id,
            "seq": seq,
            "user_id": user_id,
            "content": content,
            "created_at": now_iso(),
        }
        if client_id is not None:
            raw["client_id"] = client_id
        # The unique (chat_id, seq) index decides races: the loser knows seq
        # is committed, so seq + 1 is the next candidate and no gap can form.
        for _ in range(MAX_SEQ_ATTEMPTS):
            try:
                await self._messages.insert_one(raw)
                return _message(raw), True
            except DuplicateKeyError as exc:
                # MongoDB names the index that clashed; nx-27017 does not.
                clashed = (exc.details or {}).get("keyPattern")
                if client_id is not None and (clashed is None or "client_id" in clashed):
                    stored = await self._by_client_id(chat_id, user_id, client_id)
                    if stored is not None:
                        return stored, False
                raw["seq"] += 1
                raw["created_at"] = now_iso()
        raise Unavailable("Too much contention on the chat; retry")

    @_translate_outages
    async def messages_after(self, chat_id: str, after_seq: int, limit: int) -> list[Message]:
        if limit <= 0:
            return []
        cursor = (
            self._messages_read.find({"chat_id": chat_id, "seq": {"$gt": after_seq}})
            .sort("seq", ASCENDING)
            .limit(limit)
        )
        return [_message(raw) async for raw in cursor]

    @_translate_outages
    async def messages_before(
        self, chat_id: str, before_seq: int | None, limit: int
    ) -> tuple[list[Message], bool]:
        query: dict[str, Any] = {"chat_id": chat_id}
        if before_seq is not None:
            query["seq"] = {"$lt": before_seq}
        # one extra row says whether older messages exist
        cursor = self._messages_read.find(query).sort("seq", DESCENDING).limit(max(limit, 0) + 1)
        newest_first = [_message(raw) async for raw in cursor]
        has_more = len(newest_first) > max(limit, 0)
        return newest_first[: max(limit, 0)][::-1], has_more
