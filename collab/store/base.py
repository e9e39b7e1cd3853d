"""The storage interface every backend implements.

Records cross this boundary as plain dicts shaped like the wire protocol's
resources, so handlers can send them as they are. Backends raise the
protocol's errors (:class:`~collab.errors.AlreadyExists`,
:class:`~collab.errors.VersionConflict`, :class:`~collab.errors.NotFound`)
and translate a lost connection into :class:`~collab.errors.Unavailable`,
which always means nothing was changed.
"""

from __future__ import annotations

import abc
import datetime
import uuid
from dataclasses import dataclass
from typing import Any

Document = dict[str, Any]
Chat = dict[str, Any]
Message = dict[str, Any]
#: ``{version, user_id, created_at}``: one entry of a document's history
VersionEntry = dict[str, Any]
#: ``{id, title, role, version, updated_at}``: one row of ``documents:list``
DocumentListing = dict[str, Any]
#: ``{id, title, role, last_seq, last_message_at}``: one row of ``chat:list``
ChatListing = dict[str, Any]

DOCUMENT_ROLES = ("owner", "editor", "viewer")
CHAT_ROLES = ("owner", "member")


def now_iso() -> str:
    """ISO 8601 UTC with millisecond precision, e.g. ``2026-01-02T03:04:05.678Z``."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def new_id() -> str:
    return uuid.uuid4().hex


def parse_iso(text: str) -> datetime.datetime:
    """An ISO 8601 time as an aware UTC datetime; ValueError for anything else."""
    if not isinstance(text, str):
        raise ValueError(f"not an ISO 8601 time: {text!r}")
    parsed = datetime.datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        raise ValueError(f"ISO 8601 time without a time zone: {text!r}")
    return parsed.astimezone(datetime.timezone.utc)


def iso(moment: datetime.datetime) -> str:
    """``moment`` in the store's own format (what :func:`now_iso` returns)."""
    moment = moment.astimezone(datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def epoch_ms(text: str) -> int:
    """Milliseconds since 1970 of an ISO 8601 time (backends that compare times as numbers)."""
    moment = parse_iso(text)
    return (moment - _EPOCH) // datetime.timedelta(milliseconds=1)


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


@dataclass(frozen=True)
class Update:
    """One accepted change of a document: the Yjs update that made ``version``.

    Version 0's ``update`` is the document's initial Yjs state. A change stored
    by :meth:`Store.update_document` (the v1 path, no Yjs update) has ``b""``.
    """

    version: int
    user_id: str
    created_at: str
    update: bytes


@dataclass(frozen=True)
class NewVersion:
    """One change to store as a document's next version: the Yjs update that made it,
    the ``content`` with it applied, and who made it."""

    update: bytes
    content: str
    user_id: str


@dataclass(frozen=True)
class Snapshot:
    """A document's whole Yjs state as of ``version`` (every update up to it applied)."""

    version: int
    state: bytes


@dataclass(frozen=True)
class Compacted:
    """What :meth:`Store.compact_document` removed."""

    updates: int = 0
    snapshots: int = 0


class Store(abc.ABC):
    """Documents with their roles, chats with their members, and messages."""

    #: the URL the store was opened with, password removed (for logs and /readyz)
    display_url: str = ""
    #: whether :meth:`append_document_updates` stores several versions in one write
    appends_in_batches: bool = False
    #: whether a role read sees every write acknowledged before it began (a read that
    #: may go to a MongoDB secondary does not): only then may a connection keep a
    #: document role between events (collab/permissions.py)
    role_reads_current: bool = True
    #: whether writes take their places (a message's seq) in the order the calls were
    #: made, each queued before the call first suspends: only then may one
    #: connection's messages be in the store together (collab/pipeline.py)
    writes_in_call_order: bool = False

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and create the schema or indexes (idempotent)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Flush and release connections; the store is unusable afterwards."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise :class:`~collab.errors.Unavailable` unless the backend answers."""

    # -- documents ---------------------------------------------------------

    @abc.abstractmethod
    async def create_document(
        self, document_id: str, title: str, content: str, user_id: str, state: bytes = b""
    ) -> Document:
        """Store a document at version 0 with ``user_id`` as its owner.

        Version 0's log entry holds ``state``, the initial Yjs state, attributed
        to ``user_id``; it is also the document's first snapshot. Raises
        :class:`~collab.errors.AlreadyExists` when the id is taken (and writes
        nothing).
        """

    @abc.abstractmethod
    async def get_document(self, document_id: str) -> Document | None:
        ...

    async def update_document(
        self, document_id: str, content: str, version: int, user_id: str
    ) -> Document:
        """Replace the content if the stored version is ``version - 1``, atomically.

        The v1 compare-and-set: an :meth:`append_document_update` with
        ``expected_version=version - 1`` and no Yjs update (``b""`` in the log),
        so the version is recorded in the history like any other. Raises
        :class:`~collab.errors.VersionConflict` carrying the current document
        otherwise, and :class:`~collab.errors.NotFound` when the document does
        not exist.
        """
        return await self.append_document_update(
            document_id, b"", content, user_id, expected_version=version - 1
        )

    @abc.abstractmethod
    async def append_document_update(
        self,
        document_id: str,
        update: bytes,
        content: str,
        user_id: str,
        expected_version: int | None = None,
    ) -> Document:
        """Store one accepted change as the next version; durable on return.

        The store assigns ``version = head + 1`` atomically, across processes
        and nodes: the log entry ``(version, user_id, created_at, update)`` and
        the head (``content``, ``version``, ``updated_by``, ``updated_at``) are
        written together, and a version is never assigned twice. With
        ``expected_version``, the head must be at that version or
        :class:`~collab.errors.VersionConflict` carries the current document.
        :class:`~collab.errors.NotFound` when there is no such document.
        Returns the new head.
        """

    async def append_document_updates(
        self, document_id: str, versions: list[NewVersion], expected_version: int,
    ) -> list[Document]:
        """Store ``versions`` as the next versions, in order, all or none, in one durable
        write: the head must be at ``expected_version`` (else
        :class:`~collab.errors.VersionConflict`), and ends at ``expected_version +
        len(versions)``. Returns the head after each. Only stores with
        :attr:`appends_in_batches` have it: one durable write for a document's changes
        that queued up while the one before was being written."""
        raise NotImplementedError(f"{type(self).__name__} stores one version per write")

    @abc.abstractmethod
    async def document_updates(
        self,
        document_id: str,
        after_version: int,
        up_to: int | None = None,
        limit: int | None = None,
    ) -> list[Update]:
        """Log entries with ``after_version < version <= up_to``, oldest first.

        At most ``limit`` (all without one); ``after_version=-1`` starts at
        version 0. Never an entry beyond the head. Entries compaction removed
        are absent; an unknown document has none.
        """

    @abc.abstractmethod
    async def save_document_snapshot(self, document_id: str, version: int, state: bytes) -> None:
        """Keep ``state`` as the document's Yjs state at ``version``; durable on return.

        ``version`` must be between 0 and the head's version (ValueError
        otherwise); saving one version again replaces its state (the caller
        saves the same state, however encoded). NotFound for no document.
        """

    @abc.abstractmethod
    async def document_snapshot(
        self, document_id: str, at_most: int | None = None
    ) -> Snapshot | None:
        """The newest snapshot with ``version <= at_most`` (or the newest of all).

        Version 0's log entry counts as a snapshot, so a document created with
        :meth:`create_document` always has one until compaction removes it.
        None when there is none: no document, ``at_most`` below every snapshot
        kept, or a document stored before the update log existed (its state
        must be rebuilt from ``content`` and saved).
        """

    @abc.abstractmethod
    async def document_history(
        self, document_id: str, before_version: int | None, limit: int
    ) -> tuple[list[VersionEntry], bool]:
        """The newest ``limit`` log entries with ``version < before_version`` (or overall).

        ``[{version, user_id, created_at}]`` oldest first, with whether older
        entries exist; version 0 (the creation) is one of them.
        """

    @abc.abstractmethod
    async def compact_document(self, document_id: str, older_than: str | None) -> Compacted:
        """Drop log entries and snapshots not needed to load any kept version.

        Only what is older than ``older_than`` (ISO 8601) goes, and never what
        loading the current state needs: the newest snapshot and every entry
        after it stay, and so does the head version's own entry. Let F be the
        first version made at or after ``older_than``, and B the newest snapshot
        at or below both F and the newest snapshot: snapshots below B and
        entries at or below B (and below F) are dropped, so every version from
        F on can still be rebuilt (snapshot B plus the entries after it).
        Versions between B and F stay until a snapshot at or after them is
        saved. ``older_than=None`` drops nothing. NotFound for no document.
        """

    @abc.abstractmethod
    async def list_documents(
        self, user_id: str, before: str | None, limit: int
    ) -> tuple[list[DocumentListing], str | None]:
        """The documents ``user_id`` holds a role on, most recently updated first.

        Ties broken by id (descending). ``before`` is a cursor from an earlier
        call; the second value is the cursor of the next page, or None on the
        last. A cursor that is not one of ours for this user and this list
        raises :class:`~collab.errors.InvalidInput`. ``limit`` (at least 1) is
        taken as given; capping it is the caller's job.
        """

    @abc.abstractmethod
    async def list_chats(
        self, user_id: str, before: str | None, limit: int
    ) -> tuple[list[ChatListing], str | None]:
        """The chats ``user_id`` is a member of, most recent activity first.

        Activity is the last message's time, or the chat's creation for one
        without messages (``last_seq`` 0, ``last_message_at`` None). Paging as
        :meth:`list_documents`.
        """

    @abc.abstractmethod
    async def get_document_role(self, document_id: str, user_id: str) -> str | None:
        ...

    @abc.abstractmethod
    async def set_document_role(
        self, document_id: str, user_id: str, role: str | None
    ) -> dict[str, str]:
        """Grant ``role`` (or revoke with ``None``); return the whole ACL."""

    @abc.abstractmethod
    async def get_document_acl(self, document_id: str) -> dict[str, str]:
        ...

    # -- chats -------------------------------------------------------------

    @abc.abstractmethod
    async def create_chat(
        self, chat_id: str, title: str, user_id: str, members: list[str]
    ) -> Chat:
        """Store a chat owned by ``user_id`` with ``members`` as members.

        Raises :class:`~collab.errors.AlreadyExists` when the id is taken.
        """

    @abc.abstractmethod
    async def get_chat(self, chat_id: str) -> Chat | None:
        ...

    @abc.abstractmethod
    async def add_chat_member(self, chat_id: str, user_id: str) -> Chat:
        """Add a member (a no-op for an existing one); return the chat."""

    @abc.abstractmethod
    async def get_chat_role(self, chat_id: str, user_id: str) -> str | None:
        ...

    # -- messages ----------------------------------------------------------

    @abc.abstractmethod
    async def add_message(
        self, chat_id: str, user_id: str, content: str, client_id: str | None = None
    ) -> tuple[Message, bool]:
        """Append a message with the chat's next ``seq``; durable on return.

        Returns ``(message, created)``. When ``client_id`` was already used by
        this user in this chat the stored message comes back with
        ``created=False`` and nothing is written.
        """

    @abc.abstractmethod
    async def messages_after(self, chat_id: str, after_seq: int, limit: int) -> list[Message]:
        """Messages with ``seq > after_seq``, oldest first, at most ``limit``."""

    @abc.abstractmethod
    async def messages_before(
        self, chat_id: str, before_seq: int | None, limit: int
    ) -> tuple[list[Message], bool]:
        """The newest ``limit`` messages with ``seq < before_seq`` (or overall).

        Returned oldest first, with whether older messages exist.
        """
