"""Live documents held in memory: loaded while their room has members, changed in order.

Every change of a document, whatever path it came by (a Yjs update, a v1
whole-content replacement, a restore), goes through :meth:`LiveDocuments.change`:
the edit is applied to the loaded copy, then stored as the next version with a
compare-and-set on the version the copy has (the store assigns it; two nodes
cannot both take one). A node that lost the race catches up from the store (the
updates after its version, applied in order: Yjs updates commute, so its own
edit stays valid) and tries again, so the content stored with each version is
the merge of every version below it. It pauses a little before each new try
(jittered, growing): against a node storing changes back to back, trying again
at once loses every time, since catching up and storing take longer than that
node's next store. Past ``RETRY_FOR`` seconds the change is refused as
UNAVAILABLE. Changes to one document on one node go one at a time (a lock); the
store commits different documents' changes together.

Yjs updates queue (:meth:`LiveDocuments.change` without ``expected_version``):
on a store that writes several versions at once (``appends_in_batches``), the
changes of one document that arrive while its previous batch is being written
are applied in arrival order and stored together, one version each, in one
durable write; each is then announced and acknowledged in version order. So a
document's rate is no longer one change per commit (fsync) of the store, and a
change waits for at most the batch ahead of it. A batch the store refuses
because another node took the version is rebuilt on the stored head (loaded
again, its updates applied in order) and written again.

A copy follows the other nodes' changes as they arrive in version order
(:meth:`LiveDocuments.observed`, from the broadcast layer), and catches up from
the store whenever it finds a gap, before a live join, and before a v1 change
(whose compare-and-set is against the version the client saw).

Memory is bounded: at most ``max_loaded_documents`` copies (the least recently
used goes first), each within ``max_document_state_bytes``, and a copy whose room
has had no member on this node for ``document_unload_after`` seconds is dropped.
Every ``SNAPSHOT_EVERY`` versions a copy's state is stored as a snapshot, so that
loading replays a bounded number of updates; compaction by the retention
setting runs then too.

Awareness states (cursors) are kept per document beside the copies, not in them:
the sweep also removes the states not renewed within ``awareness_timeout`` and
hands the removal to ``expired``, for this node's live members. Each node does
this for itself (every y-protocols peer does too), which is what clears the states
another node relayed before it died.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable

from .awareness import RoomAwareness
from .config import Settings
from .errors import CollabError, NotFound, Unavailable, VersionConflict
from .store.base import Document, NewVersion, Store
from .tasks import cancel_and_wait
from .ydoc import LiveDocument

log = logging.getLogger("collab.documents")

#: versions between two snapshots of a loaded document
SNAPSHOT_EVERY = 200
#: seconds one change keeps trying while other nodes keep taking the next version
#: (each attempt merges what they stored first); then UNAVAILABLE, retry
RETRY_FOR = 5.0
#: the longest pause between two attempts (they start at 1 ms and double, jittered)
MAX_BACKOFF = 0.05
#: seconds between looks for copies to unload
SWEEP_INTERVAL = 5.0
#: the client id of a state rebuilt from a document stored before the update log:
#: fixed, so that every node rebuilding it at once makes the same bytes
REBUILT_CLIENT_ID = 0

#: the Yjs update one edit made of a copy, or None when it changed nothing
Edit = Callable[[LiveDocument], "bytes | None"]
#: ``(document_id, update)``: these awareness states expired; tell the members here
Expired = Callable[[str, bytes], Awaitable[None]]


async def _nobody_to_tell(document_id: str, update: bytes) -> None:
    return None


@dataclasses.dataclass(eq=False)
class Loaded:
    """One document in memory."""

    id: str
    doc: LiveDocument
    #: every version up to this one is in ``doc`` (and nothing of a later one)
    version: int
    #: the newest stored snapshot's version
    snapshot_version: int
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    #: loop time since when no member of the room is on this node (None: some are)
    idle_since: float | None = None
    #: Yjs changes waiting for the next batch, and the task writing the batches
    queued: list[Queued] = dataclasses.field(default_factory=list)
    writer: asyncio.Future[None] | None = None


@dataclasses.dataclass(eq=False)
class Queued:
    """A Yjs change waiting for its document's next batch."""

    edit: Edit
    user_id: str
    announce: Callable[[Change], Awaitable[None]]
    done: asyncio.Future[Change | None]

    def settle(self, result: Change | None = None, error: BaseException | None = None) -> None:
        if self.done.done():  # (its caller went away: cancelled)
            return
        if error is None:
            self.done.set_result(result)
        else:
            self.done.set_exception(error)
            self.done.exception()  # (retrieved: a caller that went away cannot)


@dataclasses.dataclass(frozen=True, slots=True)
class Change:
    """A stored change: the head it made and the Yjs update that made it."""

    document: Document
    update: bytes

    @property
    def version(self) -> int:
        return int(self.document["version"])


class LiveDocuments:
    """The loaded documents of one node."""

    def __init__(self, store: Store, settings: Settings,
                 has_members: Callable[[str], bool], expired: Expired = _nobody_to_tell) -> None:
        self._store = store
        self._settings = settings
        #: whether this node hosts a member of the document (by id) now
        self._has_members = has_members
        self._expired = expired
        self._loaded: collections.OrderedDict[str, Loaded] = collections.OrderedDict()
        self._loading: dict[str, asyncio.Future[Loaded]] = {}
        #: awareness per document with live members here: relayed, never stored, and
        #: kept apart from the copies (dropping a copy must not lose the cursors)
        self._awareness: dict[str, RoomAwareness] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._limits = {"max_content_bytes": settings.max_document_bytes,
                        "max_state_bytes": settings.max_document_state_bytes}

    def __len__(self) -> int:
        return len(self._loaded)

    def __contains__(self, document_id: str) -> bool:
        return document_id in self._loaded

    def awareness(self, document_id: str) -> RoomAwareness:
        """The document's awareness states (created on first use, dropped by the sweep
        once nobody is in the room here)."""
        states = self._awareness.get(document_id)
        if states is None:
            states = self._awareness[document_id] = RoomAwareness(
                timeout=self._settings.awareness_timeout)
        return states

    def has_awareness(self, document_id: str) -> bool:
        """Whether the document has awareness states here (without creating them)."""
        return document_id in self._awareness

    def peek(self, document_id: str) -> Loaded | None:
        """The loaded copy, if there is one (loads nothing)."""
        return self._loaded.get(document_id)

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.ensure_future(self._sweep_forever())

    async def close(self) -> None:
        sweeper, self._sweeper = self._sweeper, None
        await cancel_and_wait(sweeper)
        self._loaded.clear()
        self._awareness.clear()

    async def _sweep_forever(self) -> None:
        # y-protocols looks for outdated states ten times per timeout
        interval = min(SWEEP_INTERVAL, self._settings.awareness_timeout / 10)
        while True:
            await asyncio.sleep(interval)
            try:
                self.sweep()
                await self.expire_awareness()
            except Exception:  # noqa: BLE001 - a failed pass must not end every later one
                # (the task is kept, so an error ending it would never even be logged,
                # and cursors would stop expiring for as long as the node runs)
                log.exception("sweeping the loaded documents failed")

    async def expire_awareness(self) -> None:
        """Remove the awareness states nobody renewed in time, and say so."""
        for document_id, states in list(self._awareness.items()):
            removal = states.expire()
            if removal is None:
                continue
            try:
                await self._expired(document_id, removal)
            except Exception:  # noqa: BLE001 - the others' expiry still goes out
                log.exception("sending the expired awareness states of %s failed",
                              document_id)

    def sweep(self) -> None:
        """Unload the copies whose room has had no member here for the grace period."""
        now = asyncio.get_running_loop().time()
        for document_id in [d for d in self._awareness if not self._has_members(d)]:
            del self._awareness[document_id]
        for document_id, loaded in list(self._loaded.items()):
            if self._has_members(document_id):
                loaded.idle_since = None
            elif loaded.idle_since is None:
                loaded.idle_since = now
            elif now - loaded.idle_since >= self._settings.document_unload_after \
                    and not loaded.lock.locked():
                del self._loaded[document_id]

    def discard(self, document_id: str) -> None:
        """Drop the copy (it may hold a change the store did not take): loaded again
        from the store when next needed."""
        self._loaded.pop(document_id, None)

    @contextlib.asynccontextmanager
    async def locked(self, document_id: str) -> AsyncIterator[Loaded]:
        """The document's copy with its lock held, loading it if needed.

        A copy dropped while we waited for its lock is not the document any more: one
        discarded holds a change the store refused (reading it would show that change,
        editing it would store content no update holds), and one evicted follows the
        other nodes no longer. Then the copy loaded now is taken instead.
        """
        while True:
            loaded = await self.get(document_id)
            async with loaded.lock:
                if self._loaded.get(document_id) is loaded:
                    yield loaded
                    return

    # -- loading -----------------------------------------------------------

    async def get(self, document_id: str) -> Loaded:
        """The loaded copy, loading it from the store if needed (once, however many ask)."""
        loaded = self._loaded.get(document_id)
        if loaded is not None:
            self._loaded.move_to_end(document_id)
            return loaded
        pending = self._loading.get(document_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Loaded] = asyncio.get_running_loop().create_future()
        self._loading[document_id] = future
        try:
            loaded = await self._load(document_id)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # (retrieved: the waiters, if any, get it too)
            raise
        finally:
            del self._loading[document_id]
        future.set_result(loaded)
        self._loaded[document_id] = loaded
        self._evict()
        return loaded

    def _evict(self) -> None:
        while len(self._loaded) > self._settings.max_loaded_documents:
            idle = next((d for d, ld in self._loaded.items()
                         if not self._has_members(d) and not ld.lock.locked()), None)
            victim = idle if idle is not None else next(iter(self._loaded))
            del self._loaded[victim]

    async def _load(self, document_id: str) -> Loaded:
        snapshot = await self._store.document_snapshot(document_id)
        after = snapshot.version if snapshot is not None else 0
        updates = await self._store.document_updates(document_id, after)
        if snapshot is None or any(not u.update for u in updates):
            # stored before the update log, or changed by the store's v1 path: the
            # head's content is the truth; rebuild its state the same way on every node
            return await self._rebuild(document_id)
        doc = LiveDocument.load(snapshot.state, [u.update for u in updates], **self._limits)
        version = updates[-1].version if updates else snapshot.version
        return Loaded(document_id, doc, version, snapshot.version)

    async def _rebuild(self, document_id: str) -> Loaded:
        head = await self._store.get_document(document_id)
        if head is None:
            raise NotFound(f"Document {document_id!r} not found")
        fixed = LiveDocument(None, client_id=REBUILT_CLIENT_ID, **self._limits)
        if head["content"]:
            fixed.replace_content(head["content"])
        state = fixed.snapshot()
        await self._store.save_document_snapshot(document_id, head["version"], state)
        # (a copy of its own client id for this node's own edits)
        doc = LiveDocument.load(state, **self._limits)
        return Loaded(document_id, doc, head["version"], head["version"])

    async def catch_up(self, loaded: Loaded, up_to: int | None = None) -> None:
        """Apply the stored versions after the copy's, in order (to ``up_to`` at most)."""
        updates = await self._store.document_updates(loaded.id, loaded.version, up_to=up_to)
        for update in updates:
            if update.version <= loaded.version:
                continue  # applied meanwhile, as another node announced it (observed)
            if update.version != loaded.version + 1:
                break  # compacted away under us: reload rather than guess
            if not update.update:  # the store's v1 path wrote this one: no Yjs update
                self.discard(loaded.id)
                raise Unavailable("The document changed underneath; retry")
            loaded.doc.apply(update.update)
            loaded.version = update.version

    # -- changes -----------------------------------------------------------

    async def change(self, document_id: str, edit: Edit, user_id: str, *,
                     announce: Callable[[Change], Awaitable[None]],
                     expected_version: int | None = None,
                     fresh: bool = False) -> Change | None:
        """Apply ``edit`` to the copy, store it as the next version, then ``announce`` it
        (still in turn: the next change of the document waits for it).

        None when the edit changed nothing (nothing stored). ``expected_version``
        (the v1 compare-and-set): the version the change must follow, else
        :class:`VersionConflict` with the current document. ``fresh``: the edit
        depends on the content (a restore), so catch up from the store first.
        Refusals of the edit itself (InvalidInput, PayloadTooLarge) leave the copy
        as it was; a store failure drops the copy, since it holds a change nobody
        acknowledged. Without ``expected_version`` and ``fresh``, on a store that
        appends in batches, the change queues for its document's next batch.
        """
        if expected_version is None and not fresh and self._store.appends_in_batches:
            return await self._queue(document_id, edit, user_id, announce)
        async with self.locked(document_id) as loaded:
            if fresh or (expected_version is not None and loaded.version != expected_version):
                # the copy may be behind the store (another node wrote): read what it
                # lacks. A copy at the expected version skips the read; if the store has
                # gone on meanwhile, its compare-and-set below refuses the change.
                await self.catch_up(loaded)
            if expected_version is not None and loaded.version != expected_version:
                await self._conflict(document_id)
            update = edit(loaded.doc)
            if update is None:
                return None
            loop = asyncio.get_running_loop()
            deadline = loop.time() + RETRY_FOR
            backoff = 0.001
            while loop.time() < deadline:
                try:
                    document = await self._store.append_document_update(
                        document_id, update, loaded.doc.content, user_id,
                        expected_version=loaded.version)
                except VersionConflict:
                    if expected_version is not None:  # v1: the client must see the new one
                        self.discard(document_id)
                        raise
                    # another node took it: merge, go again, after a pause (so that
                    # nodes that lost together do not collide again at once)
                    await asyncio.sleep(random.uniform(0, backoff))
                    backoff = min(backoff * 2, MAX_BACKOFF)
                    await self.catch_up(loaded)
                    continue
                except BaseException:
                    self.discard(document_id)
                    raise
                loaded.version = document["version"]
                change = Change(document, update)
                await announce(change)
                await self._snapshot_if_due(loaded)
                return change
            self.discard(document_id)
            raise Unavailable("The document is too busy; retry")

    # -- batches -------------------------------------------------------------

    async def _queue(self, document_id: str, edit: Edit, user_id: str,
                     announce: Callable[[Change], Awaitable[None]]) -> Change | None:
        loaded = await self.get(document_id)
        queued = Queued(edit, user_id, announce, asyncio.get_running_loop().create_future())
        loaded.queued.append(queued)
        if loaded.writer is None:
            loaded.writer = asyncio.ensure_future(self._write_batches(loaded))
        # (shielded: a caller that goes away leaves its change to be stored and announced)
        return await asyncio.shield(queued.done)

    async def _write_batches(self, loaded: Loaded) -> None:
        """Until nothing is queued: take what is, store it as one batch, announce it."""
        try:
            while loaded.queued:
                async with loaded.lock:
                    if self._loaded.get(loaded.id) is not loaded:
                        break  # dropped meanwhile: see below
                    batch, loaded.queued = loaded.queued, []
                    try:
                        await self._write_batch(loaded, batch)
                    except BaseException as exc:
                        for queued in batch:
                            queued.settle(error=exc)
                        if not isinstance(exc, Exception):
                            raise
        finally:
            loaded.writer = None
        if loaded.queued:
            await self._move_queue(loaded)

    async def _move_queue(self, dropped: Loaded) -> None:
        """The copy was dropped (a failed write left changes in it that the store does not
        have, or it was evicted): what is still queued goes on with the copy loaded from
        the store, where a change that depended on a lost one is refused."""
        pending, dropped.queued = dropped.queued, []
        try:
            loaded = await self.get(dropped.id)
        except BaseException as exc:
            for queued in pending:
                queued.settle(error=exc)
            if not isinstance(exc, Exception):
                raise
            return
        loaded.queued.extend(pending)
        if loaded.writer is None:
            loaded.writer = asyncio.ensure_future(self._write_batches(loaded))

    async def _write_batch(self, loaded: Loaded, batch: list[Queued]) -> None:
        edits: list[tuple[Queued, bytes, str]] = []
        for queued in batch:
            try:
                update = queued.edit(loaded.doc)
            except CollabError as exc:  # refused alone; the copy is as it was
                queued.settle(error=exc)
                continue
            if update is None:  # nothing new: neither stored nor announced
                queued.settle(None)
                continue
            # the content as of this version: what the store keeps with it
            edits.append((queued, update, loaded.doc.content))
        if not edits:
            return
        try:
            documents = await self._append_batch(loaded, edits)
        except BaseException as exc:
            self.discard(loaded.id)  # it holds changes nobody acknowledged
            for queued, _, _ in edits:
                queued.settle(error=exc)
            if not isinstance(exc, Exception):
                raise
            return
        if not documents:  # every change of it was refused when it was rebuilt
            return
        loaded.version = documents[-1]["version"]
        for (queued, update, _), document in zip(edits, documents, strict=True):
            change = Change(document, update)
            try:
                await queued.announce(change)
            except Exception as exc:  # noqa: BLE001 - the others are stored and due theirs
                queued.settle(error=exc)
            else:
                queued.settle(change)
        await self._snapshot_if_due(loaded)

    async def _append_batch(self, loaded: Loaded,
                            edits: list[tuple[Queued, bytes, str]]) -> list[Document]:
        """Store ``edits`` (updated in place when rebuilt) as the next versions; against
        other nodes, retried as :meth:`change` retries one change."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RETRY_FOR
        backoff = 0.001
        while loop.time() < deadline:
            try:
                return await self._store.append_document_updates(
                    loaded.id, [NewVersion(update, content, queued.user_id)
                                for queued, update, content in edits],
                    expected_version=loaded.version)
            except VersionConflict:
                await asyncio.sleep(random.uniform(0, backoff))
                backoff = min(backoff * 2, MAX_BACKOFF)
                await self._rebuild_batch(loaded, edits)
                if not edits:
                    return []
        raise Unavailable("The document is too busy; retry")

    async def _rebuild_batch(self, loaded: Loaded,
                             edits: list[tuple[Queued, bytes, str]]) -> None:
        """Another node took the version: put the batch on the stored head, so that each
        version's content is again the merge of every version below it (the copy has
        the whole batch applied, so it cannot tell the contents in between)."""
        stored = await self._load(loaded.id)
        rebuilt = []
        for queued, update, _ in edits:
            try:
                again = stored.doc.apply(update)
            except CollabError as exc:  # (over a limit, with the other node's change)
                queued.settle(error=exc)
                continue
            if again is None:
                queued.settle(None)
                continue
            rebuilt.append((queued, again, stored.doc.content))
        edits[:] = rebuilt
        loaded.doc, loaded.version = stored.doc, stored.version
        loaded.snapshot_version = stored.snapshot_version

    async def _conflict(self, document_id: str) -> None:
        current = await self._store.get_document(document_id)
        if current is None:
            raise NotFound(f"Document {document_id!r} not found")
        raise VersionConflict(current)

    async def _snapshot_if_due(self, loaded: Loaded) -> None:
        if loaded.version - loaded.snapshot_version < SNAPSHOT_EVERY:
            return
        try:
            await self._store.save_document_snapshot(loaded.id, loaded.version,
                                                     loaded.doc.snapshot())
            loaded.snapshot_version = loaded.version
            days = self._settings.document_history_days
            if days:
                cutoff = datetime.datetime.now(datetime.timezone.utc) \
                    - datetime.timedelta(days=days)
                await self._store.compact_document(
                    loaded.id, cutoff.strftime("%Y-%m-%dT%H:%M:%S.000Z"))
        except CollabError as exc:  # the change is stored; the next one tries again
            log.warning("could not snapshot document %s at version %d: %s",
                        loaded.id, loaded.version, exc.message)

    # -- other nodes' changes ------------------------------------------------

    async def observed(self, document_id: str, version: int, update: bytes) -> None:
        """Another node stored ``update`` as ``version``: bring the copy along, if loaded."""
        loaded = self._loaded.get(document_id)
        if loaded is None or version <= loaded.version:
            return
        if version == loaded.version + 1:
            try:
                loaded.doc.apply(update)
            except CollabError:  # (it was accepted there): take it from the store instead
                self.discard(document_id)
                return
            loaded.version = version
            return
        async with loaded.lock:  # a gap: what came between is in the store
            try:
                await self.catch_up(loaded, up_to=version)
            except CollabError:
                self.discard(document_id)

    # -- reading at a version --------------------------------------------------

    async def content_at(self, document_id: str, version: int) -> tuple[str, str, str] | None:
        """``(content, user_id, created_at)`` of ``version``, or None when it is not kept
        (older than the retention, or not made yet)."""
        snapshot = await self._store.document_snapshot(document_id, at_most=version)
        if snapshot is None:
            return None
        updates = await self._store.document_updates(
            document_id, snapshot.version - 1, up_to=version)
        entry = next((u for u in updates if u.version == version), None)
        replay = [u for u in updates if u.version > snapshot.version]
        if entry is None or [u.version for u in replay] != list(
                range(snapshot.version + 1, version + 1)):
            return None
        if any(not u.update for u in replay):
            return None  # a version the store's v1 path made: no Yjs update to replay
        doc = LiveDocument.load(snapshot.state, [u.update for u in replay])
        return doc.content, entry.user_id, entry.created_at
