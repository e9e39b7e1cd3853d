"""A small asyncio queue for what each connection holds two of.

Every connection has two queues: Engine.IO's outgoing one (``create_queue``)
and the Tornado handler's incoming one (``receive_queue``). An
``asyncio.Queue`` is four ``collections.deque`` (its items, its getters, its
putters, and its ``join`` event's waiters), and a deque is born with a block
of 64 slots: 3 KiB per queue, 6 of the 41 KiB an idle connection held
(bench/memory.py), for queues that are empty nearly all the time.

:class:`LeanQueue` has the part of the ``asyncio.Queue`` interface
Engine.IO and the handler use (unbounded: ``put``, ``put_nowait``, ``get``,
``get_nowait``, ``task_done``, ``join``, ``empty``, ``qsize``) and holds
nothing while empty: its deque is made by the first ``put`` and dropped when
the last item is taken; a waiting ``get`` is one Future.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any


class LeanQueue:
    """An unbounded FIFO queue for coroutines in one event loop."""

    __slots__ = ("_items", "_getters", "_unfinished_tasks", "_joined")

    def __init__(self) -> None:
        self._items: collections.deque | None = None
        #: futures of the ``get`` calls waiting for an item, oldest first
        self._getters: list[asyncio.Future] | None = None
        #: (asyncio.Queue's name: collab/broadcast/local.py reads it of either kind)
        self._unfinished_tasks = 0
        #: futures of the ``join`` calls waiting
        self._joined: list[asyncio.Future] | None = None

    def qsize(self) -> int:
        return len(self._items) if self._items else 0

    def empty(self) -> bool:
        return not self._items

    def full(self) -> bool:
        return False

    def put_nowait(self, item: Any) -> None:
        if self._items is None:
            self._items = collections.deque()
        self._put(item)
        self._unfinished_tasks += 1
        self._wake_getter()

    async def put(self, item: Any) -> None:
        self.put_nowait(item)

    def get_nowait(self) -> Any:
        if not self._items:
            raise asyncio.QueueEmpty
        item = self._get()
        if not self._items:
            self._items = None
        return item

    async def get(self) -> Any:
        while not self._items:
            getter = asyncio.get_running_loop().create_future()
            if self._getters is None:
                self._getters = []
            self._getters.append(getter)
            try:
                await getter
            except BaseException:
                getter.cancel()  # (if it was woken, an item is there for the next)
                self._forget(getter)
                if self._items and not getter.cancelled():
                    self._wake_getter()
                raise
        return self.get_nowait()

    def task_done(self) -> None:
        if self._unfinished_tasks <= 0:
            raise ValueError("task_done() called too many times")
        self._unfinished_tasks -= 1
        if self._unfinished_tasks == 0 and self._joined:
            joined, self._joined = self._joined, None
            for fut in joined:
                if not fut.done():
                    fut.set_result(None)

    async def join(self) -> None:
        if self._unfinished_tasks > 0:
            fut = asyncio.get_running_loop().create_future()
            if self._joined is None:
                self._joined = []
            self._joined.append(fut)
            await fut

    # what a subclass counts (collab/sioserver.py), as asyncio.Queue's _put and _get
    def _put(self, item: Any) -> None:
        self._items.append(item)  # type: ignore[union-attr]

    def _get(self) -> Any:
        return self._items.popleft()  # type: ignore[union-attr]

    def _wake_getter(self) -> None:
        while self._getters:
            getter = self._getters.pop(0)
            if not self._getters:
                self._getters = None
            if not getter.done():
                getter.set_result(None)
                return

    def _forget(self, getter: asyncio.Future) -> None:
        if self._getters is not None and getter in self._getters:
            self._getters.remove(getter)
            if not self._getters:
                self._getters = None
