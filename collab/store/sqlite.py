"""The embedded store: one SQLite file (or memory), for single-node deployments.

All database work runs on one dedicated thread that owns the connection, so
the event loop never blocks on disk I/O and statements never interleave.
Writes commit in ``BEGIN IMMEDIATE`` transactions with ``synchronous=FULL``:
durable before the call returns, and serialized against other processes using
the same file (WAL mode lets their readers carry on meanwhile).

Group commit: writes that arrive while the thread is busy wait for it and then
share one transaction and one sync, each inside its own savepoint, so one
write's failure undoes only that write. A call returns only after its
transaction committed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from collab.errors import AlreadyExists, NotFound, Unavailable, VersionConflict
from collab.store.base import Chat, Document, Message, Store, new_id, now_iso
from collab.urls import redacted

T = TypeVar("T")
Conn = sqlite3.Connection
#: a write waiting for its group commit: what to run, and where its result goes
Write = tuple[Callable[[Conn], Any], concurrent.futures.Future[Any]]
log = logging.getLogger("collab.store")
MEMORY = ":memory:"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    id TEXT PRIMARY KEY, title TEXT NOT NULL, content TEXT NOT NULL, version INTEGER NOT NULL,
    created_by TEXT NOT NULL, created_at TEXT NOT NULL,
    updated_by TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS document_roles (
    document_id TEXT NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    user_id TEXT NOT NULL, role TEXT NOT NULL CHECK (role IN ('owner', 'editor', 'viewer')),
    PRIMARY KEY (document_id, user_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chats (
    id TEXT PRIMARY KEY, title TEXT NOT NULL, created_by TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chat_members (
    chat_id TEXT NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
    user_id TEXT NOT NULL, role TEXT NOT NULL CHECK (role IN ('owner', 'member')),
    position INTEGER NOT NULL,  -- the order members were added in; the owner's is 0
    PRIMARY KEY (chat_id, user_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY, chat_id TEXT NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
    seq INTEGER NOT NULL, user_id TEXT NOT NULL, content TEXT NOT NULL,
    created_at TEXT NOT NULL, client_id TEXT,
    UNIQUE (chat_id, seq));
CREATE UNIQUE INDEX IF NOT EXISTS messages_client_id
    ON messages (chat_id, user_id, client_id) WHERE client_id IS NOT NULL;
"""

# OperationalErrors after which nothing was changed and a retry can succeed.
_TRANSIENT = ("database is locked", "database table is locked", "disk i/o error", "unable to open")


def sqlite_path(url: str) -> str:
    """``sqlite:///rel.db`` -> ``rel.db``, ``sqlite:////abs.db`` -> ``/abs.db``,
    ``sqlite://:memory:`` (or ``sqlite://``) -> ``:memory:``, as in SQLAlchemy."""
    scheme, sep, rest = url.partition("://")
    if scheme.lower() != "sqlite" or not sep:
        raise ValueError(f"not a sqlite:// URL: {url!r}")
    if rest in ("", MEMORY, "/" + MEMORY):
        return MEMORY
    if not rest.startswith("/") or rest == "/":
        raise ValueError(f"expected sqlite:///<path> or sqlite://:memory:, got {url!r}")
    return rest[1:]


def _message(row: sqlite3.Row) -> Message:
    message = dict(row)
    if message["client_id"] is None:
        del message["client_id"]
    return message


class SqliteStore(Store):
    def __init__(self, url: str, *, busy_timeout_ms: int = 5000) -> None:
        self.path = sqlite_path(url)
        self.display_url = redacted(url)
        self._busy_timeout_ms = int(busy_timeout_ms)
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._conn: Conn | None = None
        #: writes waiting for the next group commit, and whether one is submitted
        self._writes: list[Write] = []
        self._writes_lock = threading.Lock()
        self._commit_submitted = False
        #: transactions committed and writes in them (for the tests and the bench)
        self.commits = 0
        self.committed_writes = 0

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` on the database thread."""
        if self._executor is None:
            raise Unavailable("The store is closed")
        loop = asyncio.get_running_loop()
        return await _translated(loop.run_in_executor(self._executor, self._call, fn, args))

    def _call(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        assert self._conn is not None
        return fn(self._conn, *args)

    async def _tx(self, fn: Callable[[Conn], T]) -> T:
        """Run ``fn(conn)`` in a write transaction; an exception undoes what it did."""
        executor = self._executor
        if executor is None:
            raise Unavailable("The store is closed")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._writes_lock:
            self._writes.append((fn, future))
            submit = not self._commit_submitted
            self._commit_submitted = True
        if submit:
            try:
                executor.submit(self._group_commit)
            except RuntimeError:  # the executor shut down under us (process exit)
                with self._writes_lock:
                    self._writes.clear()
                    self._commit_submitted = False
                raise Unavailable("The store is closed") from None
        return await _translated(asyncio.wrap_future(future))

    def _group_commit(self) -> None:
        """On the database thread: every waiting write, in arrival order, one commit."""
        with self._writes_lock:
            batch, self._writes = self._writes, []
            self._commit_submitted = False
        batch = [(fn, fut) for fn, fut in batch if fut.set_running_or_notify_cancel()]
        unresolved = batch
        try:
            rest = self._commit(batch)
            # one write made SQLite give up the transaction: the rest one by one, so
            # that a lasting error (a full disk) costs each write a single try
            for i, write in enumerate(rest):
                unresolved = rest[i:]
                self._commit([write])
        except BaseException as exc:  # never leave a caller waiting
            log.exception("group commit failed")
            for _, fut in unresolved:
                if not fut.done():
                    fut.set_exception(exc)

    def _commit(self, batch: list[Write]) -> list[Write]:
        """Run ``batch`` in one transaction and resolve its futures.

        Returns the writes to run again: if one write's error made SQLite give
        up the whole transaction (disk full, I/O error), that write fails and
        the others, undone with it, go again in a new transaction.
        """
        conn = self._conn
        assert conn is not None
        outcomes: list[tuple[bool, Any]] = []
        try:
            if conn.in_transaction:  # a ROLLBACK that failed before: try again first
                conn.execute("ROLLBACK")
            conn.execute("BEGIN IMMEDIATE")
            alone = len(batch) == 1  # the transaction is the write's own: no savepoint
            for i, (fn, fut) in enumerate(batch):
                if not alone:
                    conn.execute("SAVEPOINT write")
                try:
                    outcomes.append((True, fn(conn)))
                except Exception as exc:  # noqa: BLE001 - the caller's to handle
                    if not conn.in_transaction:
                        fut.set_exception(exc)
                        return batch[:i] + batch[i + 1:]
                    conn.execute("ROLLBACK" if alone else "ROLLBACK TO write")
                    outcomes.append((False, exc))
                    if alone:
                        break
                if not alone:
                    conn.execute("RELEASE write")
            if conn.in_transaction:
                conn.execute("COMMIT")
                self.commits += 1
        except BaseException as exc:
            _rollback(conn)
            for i, (_, fut) in enumerate(batch):
                if not fut.done():  # a write that failed on its own keeps its own error
                    failed = i < len(outcomes) and not outcomes[i][0]
                    fut.set_exception(outcomes[i][1] if failed else exc)
            return []
        self.committed_writes += sum(ok for ok, _ in outcomes)
        for (_, fut), (ok, value) in zip(batch, outcomes, strict=True):
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)
        return []

    async def _rows(self, sql: str, *params: Any) -> list[sqlite3.Row]:
        return await self._run(lambda conn: conn.execute(sql, params).fetchall())

    # -- lifecycle ---------------------------------------------------------

    async def open(self) -> None:
        if self._executor is not None:
            return
        executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="collab-sqlite")
        try:
            self._conn = await asyncio.get_running_loop().run_in_executor(executor, self._connect)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        self._executor = executor

    def _connect(self) -> Conn:
        if self.path != MEMORY and os.path.dirname(self.path):
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
        # isolation_level=None: no implicit transactions, we issue BEGIN/COMMIT ourselves.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            if self.path != MEMORY:
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.executescript(_SCHEMA)
        except BaseException:
            conn.close()
            raise
        return conn

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        # Queued behind any work already submitted, so that finishes first.
        await asyncio.get_running_loop().run_in_executor(executor, self._close_conn)
        executor.shutdown(wait=True)

    def _close_conn(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def ping(self) -> None:
        try:
            await self._rows("SELECT 1")
        except sqlite3.Error as e:
            raise Unavailable("The database does not answer") from e

    # -- documents ---------------------------------------------------------

    async def create_document(
        self, document_id: str, title: str, content: str, user_id: str
    ) -> Document:
        now = now_iso()
        doc = {"id": document_id, "title": title, "content": content, "version": 0,
               "created_by": user_id, "created_at": now, "updated_by": user_id, "updated_at": now}

        def insert(conn: Conn) -> None:
            try:
                conn.execute("INSERT INTO documents VALUES (:id, :title, :content, :version,"
                             " :created_by, :created_at, :updated_by, :updated_at)", doc)
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"Document {document_id!r} already exists") from None
            conn.execute("INSERT INTO document_roles VALUES (?, ?, 'owner')",
                         (document_id, user_id))

        await self._tx(insert)
        return doc

    async def get_document(self, document_id: str) -> Document | None:
        return await self._run(_get_document, document_id)

    async def update_document(
        self, document_id: str, content: str, version: int, user_id: str
    ) -> Document:
        def update(conn: Conn) -> Document:
            cur = conn.execute(
                "UPDATE documents SET content = ?, version = ?, updated_by = ?, updated_at = ?"
                " WHERE id = ? AND version = ? - 1",
                (content, version, user_id, now_iso(), document_id, version))
            current = _get_document(conn, document_id)
            if current is None:
                raise NotFound(f"Document {document_id!r} not found")
            if cur.rowcount == 0:
                raise VersionConflict(current)
            return current

        return await self._tx(update)

    async def get_document_role(self, document_id: str, user_id: str) -> str | None:
        rows = await self._rows("SELECT role FROM document_roles"
                                " WHERE document_id = ? AND user_id = ?", document_id, user_id)
        return rows[0]["role"] if rows else None

    async def set_document_role(
        self, document_id: str, user_id: str, role: str | None
    ) -> dict[str, str]:
        def set_role(conn: Conn) -> dict[str, str]:
            if _get_document(conn, document_id) is None:
                raise NotFound(f"Document {document_id!r} not found")
            if role is None:
                conn.execute("DELETE FROM document_roles WHERE document_id = ? AND user_id = ?",
                             (document_id, user_id))
            else:
                conn.execute("INSERT INTO document_roles VALUES (?, ?, ?) ON CONFLICT"
                             " (document_id, user_id) DO UPDATE SET role = excluded.role",
                             (document_id, user_id, role))
            return _get_acl(conn, document_id)

        return await self._tx(set_role)

    async def get_document_acl(self, document_id: str) -> dict[str, str]:
        return await self._run(_get_acl, document_id)

    # -- chats -------------------------------------------------------------

    async def create_chat(
        self, chat_id: str, title: str, user_id: str, members: list[str]
    ) -> Chat:
        others = list(dict.fromkeys(m for m in members if m != user_id))
        chat = {"id": chat_id, "title": title, "created_by": user_id, "created_at": now_iso()}

        def insert(conn: Conn) -> None:
            try:
                conn.execute("INSERT INTO chats VALUES (:id, :title, :created_by, :created_at)",
                             chat)
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"Chat {chat_id!r} already exists") from None
            conn.executemany("INSERT INTO chat_members VALUES (?, ?, ?, ?)",
                             [(chat_id, user_id, "owner", 0)]
                             + [(chat_id, m, "member", i) for i, m in enumerate(others, 1)])

        await self._tx(insert)
        return {**chat, "members": [user_id, *others]}

    async def get_chat(self, chat_id: str) -> Chat | None:
        return await self._run(_get_chat, chat_id)

    async def add_chat_member(self, chat_id: str, user_id: str) -> Chat:
        def add(conn: Conn) -> Chat:
            if not _chat_exists(conn, chat_id):
                raise NotFound(f"Chat {chat_id!r} not found")
            conn.execute("INSERT OR IGNORE INTO chat_members"
                         " SELECT ?, ?, 'member', COALESCE(MAX(position), 0) + 1"
                         " FROM chat_members WHERE chat_id = ?", (chat_id, user_id, chat_id))
            return _get_chat(conn, chat_id)  # type: ignore[return-value]

        return await self._tx(add)

    async def get_chat_role(self, chat_id: str, user_id: str) -> str | None:
        rows = await self._rows("SELECT role FROM chat_members WHERE chat_id = ? AND user_id = ?",
                                chat_id, user_id)
        return rows[0]["role"] if rows else None

    # -- messages ----------------------------------------------------------

    async def add_message(
        self, chat_id: str, user_id: str, content: str, client_id: str | None = None
    ) -> tuple[Message, bool]:
        def insert(conn: Conn) -> tuple[Message, bool]:
            if client_id is not None:
                stored = _find_by_client_id(conn, chat_id, user_id, client_id)
                if stored is not None:
                    return stored, False
            if not _chat_exists(conn, chat_id):
                raise NotFound(f"Chat {chat_id!r} not found")
            (seq,) = conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM messages"
                                  " WHERE chat_id = ?", (chat_id,)).fetchone()
            message = {"id": new_id(), "chat_id": chat_id, "seq": seq, "user_id": user_id,
                       "content": content, "created_at": now_iso(), "client_id": client_id}
            conn.execute("INSERT INTO messages VALUES (:id, :chat_id, :seq, :user_id, :content,"
                         " :created_at, :client_id)", message)
            if client_id is None:
                del message["client_id"]
            return message, True

        # BEGIN IMMEDIATE takes the write lock before the lookup, so no other
        # writer of the file can store the same client_id (or seq) in between.
        return await self._tx(insert)

    async def messages_after(self, chat_id: str, after_seq: int, limit: int) -> list[Message]:
        rows = await self._rows("SELECT * FROM messages WHERE chat_id = ? AND seq > ?"
                                " ORDER BY seq LIMIT ?", chat_id, after_seq, limit)
        return [_message(row) for row in rows]

    async def messages_before(
        self, chat_id: str, before_seq: int | None, limit: int
    ) -> tuple[list[Message], bool]:
        # Newest first with one row extra, which tells whether older messages exist.
        # Two statements, not "(? IS NULL OR seq < ?)": with the OR, SQLite cannot
        # seek to before_seq in the (chat_id, seq) index and scans from the newest.
        if before_seq is None:
            rows = await self._rows("SELECT * FROM messages WHERE chat_id = ?"
                                    " ORDER BY seq DESC LIMIT ?", chat_id, limit + 1)
        else:
            rows = await self._rows("SELECT * FROM messages WHERE chat_id = ? AND seq < ?"
                                    " ORDER BY seq DESC LIMIT ?", chat_id, before_seq, limit + 1)
        return [_message(row) for row in reversed(rows[:limit])], len(rows) > limit


async def _translated(call: Awaitable[T]) -> T:
    """Await ``call``; errors after which a retry can succeed become UNAVAILABLE."""
    try:
        return await call
    except sqlite3.OperationalError as e:
        if any(text in str(e).lower() for text in _TRANSIENT):
            raise Unavailable("The database is unavailable; retry") from e
        raise


# -- run on the database thread ----------------------------------------------


def _rollback(conn: Conn) -> None:
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except sqlite3.Error:
        log.exception("rollback failed")


def _get_document(conn: Conn, document_id: str) -> Document | None:
    row = conn.execute("SELECT * FROM documents WHERE id = ?", (document_id,)).fetchone()
    return dict(row) if row else None


def _get_acl(conn: Conn, document_id: str) -> dict[str, str]:
    rows = conn.execute("SELECT user_id, role FROM document_roles WHERE document_id = ?",
                        (document_id,))
    return {row["user_id"]: row["role"] for row in rows}


def _chat_exists(conn: Conn, chat_id: str) -> bool:
    return conn.execute("SELECT 1 FROM chats WHERE id = ?", (chat_id,)).fetchone() is not None


def _get_chat(conn: Conn, chat_id: str) -> Chat | None:
    row = conn.execute("SELECT * FROM chats WHERE id = ?", (chat_id,)).fetchone()
    if row is None:
        return None
    members = conn.execute("SELECT user_id FROM chat_members WHERE chat_id = ? ORDER BY position",
                           (chat_id,))
    return {**dict(row), "members": [m["user_id"] for m in members]}


def _find_by_client_id(conn: Conn, chat_id: str, user_id: str, client_id: str) -> Message | None:
    row = conn.execute("SELECT * FROM messages WHERE chat_id = ? AND user_id = ? AND client_id = ?",
                       (chat_id, user_id, client_id)).fetchone()
    return _message(row) if row else None
