"""MongoDB storage on PyMongo's native asyncio client.

Layout (database from the URL path, default ``collab``):

- ``documents`` (the heads): ``{_id, title, content, version, created_by,
  created_at, updated_by, updated_at, acl: {<key>: role}, users: [...],
  listed, pending}``. Roles live in the document so a grant or revoke is one
  atomic ``$set``/``$unset`` (with ``users``, the same ids as an array that
  ``documents:list`` can index) and a role check is one read by ``_id``.
  ``pending`` is the head version's log entry (see append_document_update).
- ``document_updates``: ``{document_id, version, user_id, created_at, ms,
  update}``, unique ``(document_id, version)``; ``document_snapshots``:
  ``{document_id, version, state, created_at}``, unique the same way.
- ``chats``: ``{_id, title, created_by, created_at, members: [...],
  roles: {<key>: role}, last_seq, last_message_at, listed}``; adding a member
  pushes to ``members`` and sets its role in the same update.
- ``messages``: ``{_id, chat_id, seq, user_id, content, created_at,
  client_id?}`` with unique ``(chat_id, seq)`` and unique ``(chat_id, user_id,
  client_id)`` over the messages that have a ``client_id``.
- ``meta``: ``{_id: "listing"}`` once the fields listing needs were filled in
  for the documents and chats stored before it (:meth:`MongoStore._migrate`).

User ids become map keys through :func:`_key`: ids may contain ``.`` (a path
separator in updates) or look numeric, so keys are escaped and prefixed.

Timestamps are stored as the protocol's ISO strings, so records come back in
exactly the shape they went in. Nothing compares them as strings in a query,
though: nx-27017 (the test stand-in) treats strings that look like dates
specially in ``$lt``/``$gte``. Listings sort on ``listed``, the activity's
digits and the id (:func:`_listed`); compaction compares ``ms``, the log
entry's time in milliseconds. Connection trouble surfaces as
:class:`~collab.errors.Unavailable`; the client reconnects on its own when the
server returns.
"""

from __future__ import annotations

import collections
import functools
import logging
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel, ReturnDocument
from pymongo.errors import ConnectionFailure, DuplicateKeyError, PyMongoError
from pymongo.read_preferences import ReadPreference

from collab.errors import AlreadyExists, NotFound, Unavailable, VersionConflict
from collab.locks import KeyedLocks
from collab.store.base import (
    Chat,
    ChatListing,
    Compacted,
    Document,
    DocumentListing,
    Message,
    Snapshot,
    Store,
    Update,
    VersionEntry,
    epoch_ms,
    new_id,
    now_iso,
)
from collab.store.cursor import ListCursor, check_limit, page
from collab.urls import redacted

DEFAULT_DATABASE = "collab"
log = logging.getLogger("collab.store")

#: How often add_message tries the next seq after losing a race for one.
MAX_SEQ_ATTEMPTS = 1000
#: How often an append tries again after another node took the version it wanted.
MAX_VERSION_ATTEMPTS = 1000
#: documents whose head this node set and logged itself, remembered to skip a read
MAX_KNOWN_HEADS = 10_000
#: a head read without the fields no caller of _document needs
_HEAD = {"acl": 0, "users": 0, "listed": 0}
_DOCUMENT = {**_HEAD, "pending": 0}

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


def _listed(activity: str, resource_id: str) -> str:
    """The key listings sort on, newest first: activity, then id.

    The activity's 17 digits have a fixed width, so comparing keys compares
    activities first and ids on a tie, and the key never looks like a date.
    """
    return "".join(c for c in activity if c.isdigit()) + " " + resource_id


def _entry(raw: dict[str, Any]) -> Update:
    return Update(raw["version"], raw["user_id"], raw["created_at"], bytes(raw["update"]))


def _pending(head: dict[str, Any]) -> dict[str, Any] | None:
    """The head version's log entry kept in the head, if it has one."""
    pending = head.get("pending")
    return pending if pending is not None and pending["version"] == head["version"] else None


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


def _chat_activity(chat_id: str, created_at: str) -> dict[str, Any]:
    """The activity fields of a chat without messages."""
    return {"last_seq": 0, "listed": _listed(created_at, chat_id)}


def _message_activity(message: dict[str, Any]) -> dict[str, Any]:
    """The ``$max`` that records ``message`` (one with ``chat_id``, ``seq``, ``created_at``)."""
    return {
        "last_seq": message["seq"],
        "last_message_at": message["created_at"],
        "listed": _listed(message["created_at"], message["chat_id"]),
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
        self._document_locks = KeyedLocks()
        #: document id -> the head version this node set and wrote to the log itself
        self._known_heads: collections.OrderedDict[str, int] = collections.OrderedDict()
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

    @property
    def role_reads_current(self) -> bool:
        """Role reads follow the read preference: only the primary's are current (known
        once open: the URL may name one)."""
        return self._client is not None \
            and self._documents_read.read_preference == ReadPreference.PRIMARY

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
            self._updates = primary.document_updates
            self._snapshots = primary.document_snapshots
            self._chats = primary.chats
            self._messages = primary.messages
            self._meta = primary.meta
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
        # Decides which writer has a version, and serves every read of the log.
        await self._updates.create_indexes(
            [IndexModel([("document_id", ASCENDING), ("version", ASCENDING)],
                        name="document_version", unique=True)]
        )
        await self._snapshots.create_indexes(
            [IndexModel([("document_id", ASCENDING), ("version", ASCENDING)],
                        name="document_version", unique=True)]
        )
        # Listing: equality on the (multikey) user array, then the sort key in order.
        await self._documents.create_indexes(
            [IndexModel([("users", ASCENDING), ("listed", DESCENDING)], name="users_listed")]
        )
        await self._chats.create_indexes(
            [IndexModel([("members", ASCENDING), ("listed", DESCENDING)], name="members_listed")]
        )
        await self._migrate()

    async def _migrate(self) -> None:
        """Fill in what listing needs for documents and chats stored before it.

        Runs until one node finished it once (the ``meta`` marker), so a start
        after that reads one document. Every write is a ``$addToSet`` or
        ``$max``, so it commutes with a newer node's appends and messages
        running meanwhile. Documents keep no log entries from before the log
        existed: their history starts with their next change.
        """
        if await self._meta.find_one({"_id": "listing"}) is not None:
            return
        async for raw in self._documents.find(
            {"listed": {"$exists": False}}, {"acl": 1, "updated_at": 1}
        ):
            users = list(_roles(raw.get("acl")))
            # $set first where the array is missing (nx-27017's $addToSet does not create
            # one), then $addToSet for a grant another node made in between
            await self._documents.update_one(
                {"_id": raw["_id"], "users": {"$exists": False}}, {"$set": {"users": users}}
            )
            await self._documents.update_one(
                {"_id": raw["_id"]},
                {
                    "$addToSet": {"users": {"$each": users}},
                    "$max": {"listed": _listed(raw["updated_at"], raw["_id"])},
                },
            )
        async for raw in self._chats.find({"listed": {"$exists": False}}, {"created_at": 1}):
            last = await self._messages.find_one(
                {"chat_id": raw["_id"]},
                {"chat_id": 1, "seq": 1, "created_at": 1},
                sort=[("seq", DESCENDING)],
            )
            activity = (
                _chat_activity(raw["_id"], raw["created_at"])
                if last is None
                else _message_activity(last)
            )
            await self._chats.update_one({"_id": raw["_id"]}, {"$max": activity})
        await self._meta.update_one(
            {"_id": "listing"}, {"$set": {"done_at": now_iso()}}, upsert=True
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

    def _know_head(self, document_id: str, version: int | None) -> None:
        """Remember (or, with None, forget) that this node set the head to ``version``
        and its log entry is written, so the next append here can skip reading it."""
        self._known_heads.pop(document_id, None)
        if version is not None:
            self._known_heads[document_id] = version
            if len(self._known_heads) > MAX_KNOWN_HEADS:
                self._known_heads.popitem(last=False)

    async def _write_entry(self, document_id: str, entry: dict[str, Any]) -> None:
        """Copy a head's pending entry into the log; already there is fine (same bytes)."""
        try:
            await self._updates.insert_one(
                {"document_id": document_id, "ms": epoch_ms(entry["created_at"]), **entry}
            )
        except DuplicateKeyError:
            pass

    async def _logged_after_ack(self, document_id: str, entry: dict[str, Any]) -> None:
        """Write the log entry of a change whose head is already stored.

        The change is durable in the head's ``pending`` already, so a failure
        here does not fail the call: the next append, from any node, copies
        the entry first, and readers take it from the head meanwhile.
        """
        try:
            await self._write_entry(document_id, entry)
        except PyMongoError:
            log.warning("document %r version %d: log entry left in the head for now",
                        document_id, entry["version"], exc_info=True)
            self._know_head(document_id, None)
        else:
            self._know_head(document_id, entry["version"])

    @_translate_outages
    async def create_document(
        self, document_id: str, title: str, content: str, user_id: str, state: bytes = b""
    ) -> Document:
        now = now_iso()
        entry = {"version": 0, "user_id": user_id, "created_at": now, "update": bytes(state)}
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
            "users": [user_id],
            "listed": _listed(now, document_id),
            "pending": entry,
        }
        try:
            await self._documents.insert_one(raw)
        except DuplicateKeyError:
            raise AlreadyExists(f"Document {document_id!r} already exists") from None
        await self._logged_after_ack(document_id, entry)
        return _document(raw)

    @_translate_outages
    async def get_document(self, document_id: str) -> Document | None:
        raw = await self._documents_read.find_one({"_id": document_id}, _DOCUMENT)
        return _document(raw) if raw else None

    @_translate_outages
    async def append_document_update(
        self,
        document_id: str,
        update: bytes,
        content: str,
        user_id: str,
        expected_version: int | None = None,
    ) -> Document:
        """The next version, race-free across nodes without a transaction.

        The head is the single document that decides: one ``find_one_and_update``
        filtered on the version it was read at sets the new content and
        version *and* the change's log entry (``pending``), atomically. So an
        acknowledged change is durable in that one write, and a version belongs
        to exactly one writer (the one whose filter matched), with exactly the
        bytes it wrote. The entry is then copied into ``document_updates``.

        A crash (or outage) between the two leaves the newest entry only in the
        head. Nothing is lost and nothing is reused: ``pending`` is overwritten
        only by the next version's write, and every writer first copies the
        pending entry of the head it read into the log (a duplicate key means it
        is there already, with the same bytes). Readers take the head version's
        entry from the head when the log lacks it, so they see every version up
        to the head, in order, with no gap. The caller of a call that failed
        after the head write gets an error although the change is stored; a v1
        retry then gets VERSION_CONFLICT showing it, a Yjs one is a no-op.
        """
        data = bytes(update)
        # One append per document at a time from this node: concurrent ones would
        # all read the same head and retry one by one.
        async with self._document_locks[document_id]:
            known = self._known_heads.get(document_id)
            for _ in range(MAX_VERSION_ATTEMPTS):
                if known is None or (expected_version is not None and known != expected_version):
                    head = await self._documents.find_one({"_id": document_id}, _HEAD)
                    if head is None:
                        raise NotFound(f"Document {document_id!r} not found")
                    if expected_version is not None and head["version"] != expected_version:
                        raise VersionConflict(_document(head))
                    pending = _pending(head)
                    if pending is not None:  # before the write that replaces it
                        await self._write_entry(document_id, pending)
                    known = head["version"]
                now = now_iso()
                entry = {"version": known + 1, "user_id": user_id, "created_at": now,
                         "update": data}
                raw = await self._documents.find_one_and_update(
                    {"_id": document_id, "version": known},
                    {"$set": {"content": content, "version": known + 1, "updated_by": user_id,
                              "updated_at": now, "listed": _listed(now, document_id),
                              "pending": entry}},
                    projection=_DOCUMENT,
                    return_document=ReturnDocument.AFTER,
                )
                if raw is None:  # another writer moved the head first: read it again
                    self._know_head(document_id, None)
                    known = None
                    continue
                await self._logged_after_ack(document_id, entry)
                return _document(raw)
        raise Unavailable("Too much contention on the document; retry")

    async def _head_version(self, document_id: str) -> dict[str, Any] | None:
        return await self._documents.find_one({"_id": document_id}, {"version": 1, "pending": 1})

    @_translate_outages
    async def document_updates(
        self,
        document_id: str,
        after_version: int,
        up_to: int | None = None,
        limit: int | None = None,
    ) -> list[Update]:
        if limit is not None and limit <= 0:
            return []
        # The head first: nothing beyond it, and its own entry may be only in it.
        head = await self._head_version(document_id)
        if head is None:
            return []
        top = head["version"] if up_to is None else min(up_to, head["version"])
        if top <= after_version:
            return []
        cursor = self._updates.find(
            {"document_id": document_id, "version": {"$gt": after_version, "$lte": top}}
        ).sort("version", ASCENDING)
        if limit is not None:
            cursor = cursor.limit(limit)
        entries = [_entry(raw) async for raw in cursor]
        pending = _pending(head)
        if (
            pending is not None
            and pending["version"] <= top
            and (limit is None or len(entries) < limit)
            and (not entries or entries[-1].version < pending["version"])
        ):
            entries.append(_entry(pending))
        return entries

    @_translate_outages
    async def save_document_snapshot(self, document_id: str, version: int, state: bytes) -> None:
        head = await self._head_version(document_id)
        if head is None:
            raise NotFound(f"Document {document_id!r} not found")
        if not 0 <= version <= head["version"]:
            raise ValueError(f"snapshot version {version} outside 0..{head['version']}")
        change = {"$set": {"state": bytes(state), "created_at": now_iso()}}
        where = {"document_id": document_id, "version": version}
        try:
            await self._snapshots.update_one(where, change, upsert=True)
        except DuplicateKeyError:  # another writer's upsert inserted it first
            await self._snapshots.update_one(where, change)

    @_translate_outages
    async def document_snapshot(
        self, document_id: str, at_most: int | None = None
    ) -> Snapshot | None:
        query: dict[str, Any] = {"document_id": document_id}
        if at_most is not None:
            query["version"] = {"$lte": at_most}
        raw = await self._snapshots.find_one(query, sort=[("version", DESCENDING)])
        if raw is not None:
            return Snapshot(raw["version"], bytes(raw["state"]))
        if at_most is not None and at_most < 0:
            return None
        # version 0's entry: in the log, or still in the head of a new document
        first = await self.document_updates(document_id, -1, up_to=0)
        return Snapshot(0, first[0].update) if first else None

    @_translate_outages
    async def document_history(
        self, document_id: str, before_version: int | None, limit: int
    ) -> tuple[list[VersionEntry], bool]:
        limit = max(limit, 0)
        head = await self._head_version(document_id)
        if head is None:
            return [], False
        below = head["version"] + 1 if before_version is None else before_version
        newest_first = [
            {"version": raw["version"], "user_id": raw["user_id"], "created_at": raw["created_at"]}
            async for raw in self._updates.find(
                {"document_id": document_id,
                 "version": {"$lt": min(below, head["version"] + 1)}},
                {"version": 1, "user_id": 1, "created_at": 1},
            ).sort("version", DESCENDING).limit(limit + 1)
        ]
        pending = _pending(head)
        if (
            pending is not None
            and pending["version"] < below
            and (not newest_first or newest_first[0]["version"] < pending["version"])
        ):
            newest_first.insert(0, {k: pending[k] for k in ("version", "user_id", "created_at")})
        return newest_first[:limit][::-1], len(newest_first) > limit

    @_translate_outages
    async def compact_document(self, document_id: str, older_than: str | None) -> Compacted:
        """As the interface says, in a few single-document steps: each keeps the
        rule, since appends only add versions above the head and a snapshot
        saved meanwhile only makes more removable; two nodes compacting at once
        remove the same things or fewer."""
        head = await self._head_version(document_id)
        if head is None:
            raise NotFound(f"Document {document_id!r} not found")
        if older_than is None:
            return Compacted()
        cut = epoch_ms(older_than)
        newest = await self._snapshots.find_one(
            {"document_id": document_id}, {"version": 1}, sort=[("version", DESCENDING)]
        )
        if newest is None:  # version 0's entry is the only snapshot: all of it is needed
            return Compacted()
        first = await self._updates.find_one(
            {"document_id": document_id, "ms": {"$gte": cut}}, {"version": 1},
            sort=[("version", ASCENDING)],
        )
        first_kept = first["version"] if first is not None else head["version"] + 1
        base = await self._snapshots.find_one(
            {"document_id": document_id,
             "version": {"$lte": min(first_kept, newest["version"])}},
            {"version": 1}, sort=[("version", DESCENDING)],
        )
        if base is None:
            return Compacted()
        snapshots = await self._snapshots.delete_many(
            {"document_id": document_id, "version": {"$lt": base["version"]}}
        )
        updates = await self._updates.delete_many(
            {"document_id": document_id,
             "version": {"$lte": min(base["version"], first_kept - 1, head["version"] - 1)}}
        )
        return Compacted(updates=updates.deleted_count, snapshots=snapshots.deleted_count)

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
        update = (
            {"$unset": {path: ""}, "$pull": {"users": user_id}}
            if role is None
            else {"$set": {path: role}, "$addToSet": {"users": user_id}}
        )
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

    @_translate_outages
    async def list_documents(
        self, user_id: str, before: str | None, limit: int
    ) -> tuple[list[DocumentListing], str | None]:
        check_limit(limit)
        query: dict[str, Any] = {"users": user_id}
        if before is not None:
            cursor = ListCursor.decode(before, "documents", user_id)
            query["listed"] = {"$lt": _listed(cursor.activity, cursor.id)}
        found = self._documents_read.find(
            query, {"title": 1, "version": 1, "updated_at": 1, "acl": 1}
        ).sort("listed", DESCENDING).limit(limit + 1)
        rows = [raw async for raw in found]
        rows, next_cursor = page(rows, limit, lambda raw: (raw["updated_at"], raw["_id"]),
                                 "documents", user_id)
        listed = []
        for raw in rows:
            role = _roles(raw.get("acl")).get(user_id)
            if role is not None:  # users and acl change together; this is belt and braces
                listed.append({"id": raw["_id"], "title": raw["title"], "role": role,
                               "version": raw["version"], "updated_at": raw["updated_at"]})
        return listed, next_cursor

    # -- chats -------------------------------------------------------------

    @_translate_outages
    async def create_chat(self, chat_id: str, title: str, user_id: str, members: list[str]) -> Chat:
        ordered = [user_id]
        for member in members:
            if member not in ordered:
                ordered.append(member)
        now = now_iso()
        raw = {
            "_id": chat_id,
            "title": title,
            "created_by": user_id,
            "created_at": now,
            "members": ordered,
            "roles": {_key(m): ("owner" if m == user_id else "member") for m in ordered},
            **_chat_activity(chat_id, now),
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

    @_translate_outages
    async def list_chats(
        self, user_id: str, before: str | None, limit: int
    ) -> tuple[list[ChatListing], str | None]:
        check_limit(limit)
        query: dict[str, Any] = {"members": user_id}
        if before is not None:
            cursor = ListCursor.decode(before, "chats", user_id)
            query["listed"] = {"$lt": _listed(cursor.activity, cursor.id)}
        found = self._chats_read.find(
            query,
            {"title": 1, "roles": 1, "created_at": 1, "last_seq": 1, "last_message_at": 1},
        ).sort("listed", DESCENDING).limit(limit + 1)
        rows = [raw async for raw in found]
        rows, next_cursor = page(
            rows, limit, lambda raw: (raw.get("last_message_at") or raw["created_at"], raw["_id"]),
            "chats", user_id,
        )
        listed = []
        for raw in rows:
            role = (raw.get("roles") or {}).get(_key(user_id))
            if role is not None:
                listed.append({"id": raw["_id"], "title": raw["title"], "role": role,
                               "last_seq": raw.get("last_seq", 0),
                               "last_message_at": raw.get("last_message_at")})
        return listed, next_cursor

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
            message, created = await self._add_message(chat_id, user_id, content, client_id)
        await self._record_activity(message)
        return message, created

    async def _record_activity(self, message: Message) -> None:
        """Move the chat's ``last_seq`` / ``last_message_at`` up to ``message``.

        A second write after the insert (MongoDB needs a transaction to make it
        one, which a standalone server lacks). ``$max`` makes it commute: two
        nodes' messages may record in either order and the chat ends at the
        higher seq. A crash in between leaves the chat listed by its previous
        message until the next one; a retry with the same ``client_id`` (what
        a client that got no ack sends) records it, as this runs on that path
        too. A failure here does not fail the message, which is stored.
        """
        try:
            await self._chats.update_one(
                {"_id": message["chat_id"]},
                {"$max": _message_activity(message)},
            )
        except PyMongoError:
            log.warning("chat %r: activity of seq %d not recorded", message["chat_id"],
                        message["seq"], exc_info=True)

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
