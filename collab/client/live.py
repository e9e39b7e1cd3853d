"""Live documents: a ``pycrdt.Doc`` kept in sync with a collab document over the manager.

:class:`LiveDocument` is the binding of one document, :class:`LiveRooms` the tracker
that keeps every open binding joined across reconnects (a :class:`~.recovery.Rooms`).

How a binding moves changes (PROTOCOL "Live documents: Yjs"):

- it joins with the doc's state vector, applies the ack's ``update`` (what it lacked)
  and queues what the server lacks, computed from the ack's ``state_vector``; after a
  reconnect it does the same again, so edits made offline are merged, not lost;
- every local transaction's update is queued and sent as ``documents:yupdate`` by one
  sender task, one call in flight at a time (what piled up meanwhile goes as one merged
  update); a lost ack is resent, which is safe because a Yjs update applied twice
  changes nothing;
- remote ``documents:yupdate`` events are applied in a transaction whose origin is the
  binding (as y-websocket's provider does), and its own observer skips those, so they
  are never echoed back;
- awareness is a ``pycrdt.Awareness`` on the doc: the local state is sent as
  ``documents:awareness``, incoming updates are applied, and the server removes the
  binding's state for the others when it leaves.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, Protocol

import pycrdt

from .calls import unwrap
from .dispatch import Handler, Handlers
from .errors import DISCONNECTED, TIMEOUT, CollabError
from .recovery import Undo, field, forgotten

log = logging.getLogger("collab.client")

#: a Yjs update (format v1) that carries nothing: what ``get_update`` gives when the
#: other side has everything
EMPTY_UPDATE = b"\x00\x00"
#: the role that may read but not change a document
VIEWER = "viewer"
#: failures of a send that are worth another try with the same update
RETRIED = ("RATE_LIMITED", "UNAVAILABLE", TIMEOUT)
#: between two tries after ``UNAVAILABLE`` or ``TIMEOUT``: doubling from ... up to ...
RETRY_FIRST, RETRY_CAP = 0.1, 5.0


class Call(Protocol):
    """``Calls.call``: emit and return the raw ack; ``on_ack`` runs in the dispatcher."""

    def __call__(self, event: str, data: Any, deadline: float | None = None,
                 on_ack: Callable[[Any], Awaitable[None]] | None = None) -> Awaitable[Any]: ...


class ReadOnlyError(CollabError):
    """A local change to a document the user may only read: code ``PERMISSION_DENIED``,
    raised from the transaction that made it (inside pycrdt's ``ExceptionGroup``)."""

    def __init__(self, document_id: str) -> None:
        super().__init__("PERMISSION_DENIED",
                         f"Document {document_id!r} is open read-only (role viewer): "
                         "the local change is not sent")


@dataclass(frozen=True)
class RemoteChange:
    """What the ``change`` handlers of a :class:`LiveDocument` get, after it is applied."""

    update: bytes
    #: the version the change made; for a recovered one, the version the document is at
    version: int
    #: who made it; ``None`` for a recovered one (possibly several users' changes)
    user_id: str | None
    #: True when a join again brought it in: after a reconnect, or after a
    #: ``documents:update``/``documents:restore`` sent on the same manager
    recovered: bool = False


class LiveDocument:
    """One document open live: ``doc`` (a ``pycrdt.Doc``), its ``text`` (the ``Y.Text``
    named ``content``), ``awareness``, ``version`` and ``role``.

    Edit ``doc`` with pycrdt as usual; the binding sends each change. ``on("change")``
    handlers are told of remote changes after they are applied, ``on("error")`` handlers
    of failures. Use as ``async with await manager.open_document(id) as live:``.
    """

    def __init__(self, document_id: str, doc: pycrdt.Doc | None, call: Call,
                 ack_timeout: float, forget: Callable[[LiveDocument], None]) -> None:
        self.document_id = document_id
        self.doc = doc if doc is not None else pycrdt.Doc()
        self.text = self.doc.get("content", type=pycrdt.Text)
        self.awareness = pycrdt.Awareness(self.doc)
        #: the user's role on the document, as the last join said
        self.role: str | None = None
        #: the newest version this copy has: its own changes acked, the others' received
        self.version = 0
        #: why the binding closed by itself, if it did
        self.error: CollabError | None = None
        self._call = call
        self._ack_timeout = ack_timeout
        self._forget = forget
        self._handlers = Handlers()
        self._opened = False  # the first join succeeded
        self._closed = False
        self._live = False  # joined on the current connection
        self._session = 0  # incremented at every join: the sends of an older one are moot
        self._pending: list[bytes] = []  # local updates not sent yet
        # whether the doc may hold something the server lacks: a local change not acked
        # yet, or the content of a ``doc`` given at open. Without one, the server has
        # everything (all else came from it), and a join sends nothing: the diff against
        # its state vector is never empty once anything was deleted (a Yjs update always
        # carries the whole delete set)
        self._unacked = doc is not None
        self._in_flight = False
        self._awareness_dirty = False
        self._applying = False  # inside a remote apply: the observer skips it ...
        self._remote_changed = False  # ... and notes that it changed something
        self._changed = asyncio.Event()
        self._doc_subscription = self.doc.observe(self._on_transaction)
        self._awareness_subscription = self.awareness.observe(self._on_awareness)
        self._sender: asyncio.Task | None = None
        self._renewal: asyncio.Task | None = None

    # -- public API ------------------------------------------------------------

    @property
    def read_only(self) -> bool:
        """Whether local changes are refused (the user is a viewer)."""
        return self.role == VIEWER

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def live(self) -> bool:
        """Whether the binding is joined on the current connection."""
        return self._live and not self._closed

    @property
    def content(self) -> str:
        return str(self.text)

    def on(self, event: str, handler: Handler | None = None) -> Any:
        """Register ``handler`` (sync or async) for ``change`` (a :class:`RemoteChange`)
        or ``error`` (a :class:`CollabError`). Usable as a decorator."""
        if event not in ("change", "error"):
            raise ValueError(f"a LiveDocument has 'change' and 'error' handlers, not {event!r}")

        def register(fn: Handler) -> Handler:
            return self._handlers.add(event, fn)

        return register(handler) if handler is not None else register

    async def synced(self) -> int:
        """Wait until joined and every local change made so far is acked; the version.
        While offline this waits for the reconnection (bound it with ``wait_for``).
        Raises the error that closed the binding, or ``DISCONNECTED`` once closed."""
        await self._until(lambda: self._live and not self._pending and not self._in_flight)
        return self.version

    async def wait_for_version(self, version: int) -> int:
        """Wait until this copy has ``version`` (its own acked, or received); the version."""
        await self._until(lambda: self.version >= version)
        return self.version

    async def close(self, timeout: float | None = None) -> None:
        """Send what is still unsent (waiting up to ``timeout``, default the manager's
        ``ack_timeout``), leave the document and stop. If local changes could not be
        sent, the binding still closes and this raises ``DISCONNECTED`` or ``TIMEOUT``:
        ``doc`` keeps them, and ``open_document(id, doc=live.doc)`` sends them later."""
        if self._closed:
            return
        unsent: CollabError | None = None
        if self._opened and (self._pending or self._in_flight):
            try:
                await asyncio.wait_for(self.synced(),
                                       self._ack_timeout if timeout is None else timeout)
            except asyncio.TimeoutError:
                unsent = CollabError(TIMEOUT, "Local changes were not acknowledged in time")
            except CollabError as exc:
                unsent = exc
        was_live = self._live
        await self._stop()
        if was_live:
            with suppress(CollabError):
                await self._call("documents:leave", {"document_id": self.document_id})
        if unsent is not None and (self._pending or self._in_flight):
            raise CollabError(unsent.code, f"Local changes to {self.document_id!r} were not "
                              f"sent ({unsent.message}); they are still in the doc")

    async def __aenter__(self) -> LiveDocument:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "live" if self._live else "offline"
        return f"<LiveDocument {self.document_id!r} v{self.version} {self.role} {state}>"

    # -- from the tracker --------------------------------------------------------

    def join_payload(self) -> dict[str, Any]:
        return {"document_id": self.document_id, "state_vector": self.doc.get_state()}

    async def joined(self, ack: Any, recovered: bool) -> None:
        """A join's ack (successful): take what the server sent, queue what it lacks."""
        result = unwrap(ack)
        self.role = result["role"]
        before = self.doc.get_state()
        changed = self._apply_remote(result["update"])
        self.version = max(self.version, result["document"]["version"])
        missing = self.doc.get_update(result["state_vector"]) if self._unacked else EMPTY_UPDATE
        if missing == EMPTY_UPDATE:
            self._pending = []
        elif self.read_only:
            self._pending = []
            self._unacked = False  # never to be sent
            await self._report(ReadOnlyError(self.document_id))  # edits made as an editor
        else:
            self._pending = [missing]  # covers every queued update, and the one in flight
        self._sync_awareness(result["awareness"], recovered)
        self._session += 1
        self._live = True
        self._opened = True
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_loop())
            self._renewal = asyncio.create_task(self.awareness.start())
        self._notify()
        if recovered and changed:
            update = self.doc.get_update(before)
            await self._handlers.deliver("change", RemoteChange(update, self.version, None,
                                                                recovered=True))

    def lost(self) -> None:
        """The connection went down: send nothing until the next join."""
        self._live = False
        self._notify()

    async def receive(self, update: bytes, version: Any, user_id: Any) -> None:
        """A remote ``documents:yupdate``."""
        changed = self._apply_remote(update)
        if isinstance(version, int):
            self.version = max(self.version, version)
        self._notify()
        if changed:
            await self._handlers.deliver("change", RemoteChange(update, self.version, user_id))

    def receive_awareness(self, update: bytes) -> None:
        try:
            self.awareness.apply_awareness_update(update, self)
        except Exception:  # noqa: BLE001 - the server checked it; never stop the dispatcher
            log.warning("collab client: undecodable awareness update for %r", self.document_id)

    async def fail(self, error: CollabError, leave: bool) -> None:
        """Close for good with ``error``: the document is gone, refuses this user, or
        refused a change (which every later update would depend on)."""
        if self._closed:
            return
        self.error = error
        was_live = self._live
        await self._stop()
        if leave and was_live:
            with suppress(CollabError):
                await self._call("documents:leave", {"document_id": self.document_id})
        await self._report(error)

    async def detach(self) -> None:
        """Stop without leaving: the manager is disconnecting."""
        await self._stop()

    # -- local changes -------------------------------------------------------------

    def _on_transaction(self, event: pycrdt.TransactionEvent) -> None:
        """The doc's observer, at the commit of every transaction that changed it."""
        if self._applying:
            self._remote_changed = True
            return
        if self._closed:
            return
        if self.read_only:
            raise ReadOnlyError(self.document_id)
        self._unacked = True
        self._pending.append(event.update)
        self._notify()

    def _on_awareness(self, topic: str, change: tuple[dict[str, Any], Any]) -> None:
        if topic == "update" and change[1] == "local" and not self._closed:
            self._awareness_dirty = True
            self._notify()

    async def _send_loop(self) -> None:
        """The one sender: document updates first, then the local awareness state."""
        delay = RETRY_FIRST
        while True:
            try:
                await self._until(lambda: self._live and bool(
                    self._pending or self._awareness_dirty))
            except CollabError:
                return  # closed
            session = self._session
            document = bool(self._pending)
            try:
                if document:
                    await self._send_update(session)
                else:
                    await self._send_awareness()
            except CollabError as exc:
                if self._closed or self._session != session:
                    continue  # joined again meanwhile: that join resent what was unsent
                if exc.code == DISCONNECTED:  # the next join resends; wait for it
                    with suppress(CollabError):
                        await self._until(lambda s=session: self._session != s)
                    continue
                if exc.code in RETRIED:
                    wait = retry_after(exc) or delay
                    delay = min(RETRY_CAP, delay * 2)
                    await asyncio.sleep(wait)
                    continue
                if document:  # the document refused a change: nothing later can go either
                    await self.fail(exc, leave=True)
                    return
                await self._report(exc)  # an awareness state refused: editing goes on
            else:
                delay = RETRY_FIRST

    async def _send_update(self, session: int) -> None:
        pending, self._pending = self._pending, []
        update = pending[0] if len(pending) == 1 else pycrdt.merge_updates(*pending)
        self._in_flight = True
        try:
            ack = unwrap(await self._call("documents:yupdate",
                                          {"document_id": self.document_id, "update": update}))
        except BaseException:
            if self._session == session and not self._closed:
                self._pending.insert(0, update)  # sent again, first
            raise
        finally:
            self._in_flight = False
            self._notify()
        self.version = max(self.version, ack["version"])
        if self._session == session and not self._pending:
            self._unacked = False

    async def _send_awareness(self) -> None:
        self._awareness_dirty = False
        # (pycrdt writes the JSON with ``ensure_ascii``: its string lengths, which it
        # counts in code points, are then byte counts as lib0 wants)
        update = self.awareness.encode_awareness_update([self.awareness.client_id])
        try:
            unwrap(await self._call("documents:awareness",
                                    {"document_id": self.document_id, "update": update}))
        except CollabError as exc:
            if exc.code == DISCONNECTED or exc.code in RETRIED:
                self._awareness_dirty = True
            raise

    # -- remote changes --------------------------------------------------------------

    @contextmanager
    def _remote(self) -> Iterator[None]:
        self._applying = True
        try:
            with self.doc.transaction(origin=self):
                yield
        finally:
            self._applying = False

    def _apply_remote(self, update: bytes) -> bool:
        """Apply an update from the server; whether it changed the doc (a deletion
        changes no state vector, so the observer tells)."""
        self._remote_changed = False
        try:
            with self._remote():
                self.doc.apply_update(update)
        except Exception:  # noqa: BLE001 - the server checked it; never stop the dispatcher
            log.warning("collab client: an update for %r could not be applied",
                        self.document_id, exc_info=True)
        return self._remote_changed

    def _sync_awareness(self, room: bytes, recovered: bool) -> None:
        """Take the room's states from a join; after a reconnect, drop the states of
        those who left meanwhile and announce ours again (with a newer clock: the
        server answered our old connection's departure with a removal at the old one)."""
        self.receive_awareness(room)
        if not recovered:
            return
        present = awareness_client_ids(room)
        own = self.awareness.client_id
        gone = [cid for cid in self.awareness.states if cid != own and cid not in present] \
            if present is not None else []
        if gone:
            self.awareness.remove_awareness_states(gone, self)
        state = self.awareness.get_local_state()
        if state is not None and self.awareness.meta[own]["clock"] > 0:
            self.awareness.set_local_state(state)  # a newer clock; the sender sends it

    # -- state ------------------------------------------------------------------

    def _notify(self) -> None:
        """Wake every waiter to check its condition again."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def _until(self, ready: Callable[[], bool]) -> None:
        while True:
            if self._closed:
                raise self.error or CollabError(DISCONNECTED,
                                                f"Document {self.document_id!r} is closed")
            if ready():
                return
            await self._changed.wait()

    async def _report(self, error: CollabError) -> None:
        await self._handlers.deliver("error", error)

    def halt(self) -> list[asyncio.Task]:
        """Stop at once: no more sending, receiving or renewing; the doc is the user's
        alone. Returns the tasks that were cancelled, for the caller to await."""
        if self._closed:
            return []
        self._closed = True
        self._live = False
        self._forget(self)
        self.doc.unobserve(self._doc_subscription)
        self.awareness.unobserve(self._awareness_subscription)
        self._notify()
        tasks = [task for task in (self._sender, self._renewal)
                 if task is not None and task is not asyncio.current_task()]
        self._sender = self._renewal = None
        for task in tasks:
            task.cancel()
        return tasks

    async def _stop(self) -> None:
        await asyncio.gather(*self.halt(), return_exceptions=True)


class LiveRooms:
    """The open :class:`LiveDocument` bindings, re-joined after every reconnect."""

    def __init__(self, call: Call, ack_timeout: float) -> None:
        self._call = call
        self._ack_timeout = ack_timeout
        self._documents: dict[str, LiveDocument] = {}
        self._connection = 0  # incremented at every loss: which connection a join was on

    @property
    def tracked(self) -> bool:
        return bool(self._documents)

    @property
    def joined(self) -> list[str]:
        return [d for d, live in self._documents.items() if live._opened]

    async def open(self, document_id: str, doc: pycrdt.Doc | None,
                   deadline: float) -> LiveDocument:
        if document_id in self._documents:
            raise RuntimeError(f"Document {document_id!r} is open already")
        live = LiveDocument(document_id, doc, self._call, self._ack_timeout, self._forget)
        self._documents[document_id] = live  # before the join: its broadcasts are for it
        connection = self._connection

        failed: list[Exception] = []

        async def on_ack(ack: Any) -> None:  # in the dispatcher, before later events
            if field(ack, "ok") is not True or self._documents.get(document_id) is not live:
                return
            try:
                await live.joined(ack, recovered=False)
            except Exception as exc:  # noqa: BLE001 - a malformed ack: raised by open()
                failed.append(exc)
                return
            if self._connection != connection:
                live.lost()  # joined on a connection that is gone: the resume re-joins

        try:
            unwrap(await self._call("documents:join", live.join_payload(), deadline, on_ack))
            if failed:
                raise CollabError("INTERNAL_ERROR", "Malformed join acknowledgement",
                                  {"error": repr(failed[0])})
        except BaseException:
            await live.detach()
            raise
        return live

    def before_emit(self, event: str, data: Any) -> Undo | None:
        """Refuse a plain join or a leave of a document open live: on one connection a
        document is joined in one mode, and the binding has to stay in it."""
        if event in ("documents:join", "documents:leave") and \
                field(data, "document_id") in self._documents:
            raise RuntimeError(f"Document {field(data, 'document_id')!r} is open live: "
                               "use its LiveDocument (close() leaves it)")
        return None

    async def after_ack(self, event: str, data: Any, ack: Any) -> None:
        """A v1 change through this very connection (``documents:update`` or
        ``documents:restore``) is announced to everyone but its sender: join again with
        the state vector to take it in, or the copy would miss it for good."""
        live = self._documents.get(field(data, "document_id"))
        if event not in ("documents:update", "documents:restore") or \
                field(ack, "ok") is not True or live is None or not live.live:
            return
        try:
            await self._rejoin(live)
        except CollabError as exc:  # lost meanwhile: the reconnect's resume resyncs
            log.info("resync of %r after %s failed: %r", live.document_id, event, exc)

    async def on_event(self, event: str, data: Any) -> bool:
        if event not in ("documents:yupdate", "documents:awareness"):
            return False
        live = self._documents.get(field(data, "document_id"))
        update = field(data, "update")
        if live is None or not isinstance(update, bytes):
            return False
        if event == "documents:yupdate":
            await live.receive(update, field(data, "version"), field(data, "user_id"))
        else:
            live.receive_awareness(update)
        return True

    def lost(self) -> None:
        self._connection += 1
        for live in self._documents.values():
            live.lost()

    async def resume(self) -> None:
        for live in list(self._documents.values()):
            if live._opened and not live.closed:  # (else its first join is under way)
                await self._rejoin(live)

    async def _rejoin(self, live: LiveDocument) -> None:
        """Join again with the doc's state vector; raise if that failed for now."""
        ack = await self._call("documents:join", live.join_payload())
        if forgotten(ack):
            await live.fail(CollabError.from_dict(ack["error"]), leave=False)
        elif field(ack, "ok") is not True:
            unwrap(ack)  # raises
        else:
            await live.joined(ack, recovered=True)

    def clear(self) -> None:
        for live in list(self._documents.values()):
            live.halt()  # its tasks end as soon as they run again
        self._documents.clear()

    def _forget(self, live: LiveDocument) -> None:
        if self._documents.get(live.document_id) is live:
            del self._documents[live.document_id]


def awareness_client_ids(update: bytes) -> set[int] | None:
    """The client ids an awareness update has entries for; None if it is malformed."""
    decoder = pycrdt.Decoder(update)
    ids: set[int] = set()
    try:
        for _ in range(decoder.read_var_uint()):
            ids.add(decoder.read_var_uint())
            decoder.read_var_uint()  # clock
            decoder.read_var_string()  # state
    except (RuntimeError, IndexError, ValueError):  # pycrdt's decoder on bad input
        return None
    return ids


def retry_after(error: CollabError) -> float | None:
    """``RATE_LIMITED``'s ``retry_after_ms``, in seconds."""
    ms = field(error.details, "retry_after_ms")
    return ms / 1000 if isinstance(ms, (int, float)) and ms >= 0 else None


__all__ = ["LiveDocument", "LiveRooms", "ReadOnlyError", "RemoteChange"]
