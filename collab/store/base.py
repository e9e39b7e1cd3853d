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
from typing import Any

Document = dict[str, Any]
Chat = dict[str, Any]
Message = dict[str, Any]

DOCUMENT_ROLES = ("owner", "editor", "viewer")
CHAT_ROLES = ("owner", "member")


def now_iso() -> str:
    """ISO 8601 UTC with millisecond precision, e.g. ``2026-01-02T03:04:05.678Z``."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def new_id() -> str:
    return uuid.uuid4().hex


class Store(abc.ABC):
    """Documents with their roles, chats with their members, and messages."""

    #: the URL the store was opened with, password removed (for logs and /readyz)
    display_url: str = ""

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
        self, document_id: str, title: str, content: str, user_id: str
    ) -> Document:
        """Store a document at version 0 with ``user_id`` as its owner.

        Raises :class:`~collab.errors.AlreadyExists` when the id is taken.
        """

    @abc.abstractmethod
    async def get_document(self, document_id: str) -> Document | None:
        ...

    @abc.abstractmethod
    async def update_document(
        self, document_id: str, content: str, version: int, user_id: str
    ) -> Document:
        """Replace the content if the stored version is ``version - 1``, atomically.

        Raises :class:`~collab.errors.VersionConflict` carrying the current
        document otherwise, and :class:`~collab.errors.NotFound` when the
        document does not exist.
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
