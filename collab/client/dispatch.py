"""The ordered dispatcher, and the user's handlers it delivers to.

python-socketio runs each incoming packet in its own task. Every event, and every
acknowledgement of a call made outside the dispatcher, is queued here instead,
and one task works the queue off in arrival order. So handlers run one at a
time, in the order the server sent the events, and a call's caller resumes only
after the handlers of everything the server sent before its ack have run.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("collab.client")

Handler = Callable[[Any], Any]
Job = Callable[[], Awaitable[Any]]


class Dispatcher:
    """One queue and the single task that runs its jobs, one after the other."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Job | None] = asyncio.Queue()
        self._task: asyncio.Task | None = None

    @property
    def inside(self) -> bool:
        """Whether the caller is a job of the dispatcher (which then cannot wait for a
        job queued behind itself)."""
        return self._task is not None and asyncio.current_task() is self._task

    def start(self) -> None:
        """A fresh queue and task; jobs left in an old queue are dropped with it."""
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._work(self._queue))

    def stop(self) -> None:
        """End the task once the jobs queued so far have run."""
        self._queue.put_nowait(None)

    async def join(self) -> None:
        if self._task is not None and not self.inside:
            await asyncio.gather(self._task, return_exceptions=True)

    def put(self, job: Job) -> None:
        self._queue.put_nowait(job)

    async def run(self, job: Job) -> Any:
        """Run ``job`` in turn with the events and return its result (at once when
        called from inside the dispatcher)."""
        if self.inside:
            return await job()
        fut: asyncio.Future = asyncio.get_running_loop().create_future()

        async def run() -> None:
            try:
                result = await job()
            except Exception as exc:  # noqa: BLE001 - handed to the waiter
                if not fut.done():
                    fut.set_exception(exc)
            else:
                if not fut.done():
                    fut.set_result(result)

        self.put(run)
        return await fut

    @staticmethod
    async def _work(queue: asyncio.Queue[Job | None]) -> None:
        while True:
            job = await queue.get()
            if job is None:
                return
            try:
                await job()
            except Exception:  # noqa: BLE001 - keep delivering
                log.exception("collab client: error while dispatching")


class Handlers:
    """The user's handlers, by event name; sync or async, run one after the other."""

    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = defaultdict(list)

    def add(self, event: str, handler: Handler) -> Handler:
        self._handlers[event].append(handler)
        return handler

    async def deliver(self, event: str, data: Any) -> None:
        for handler in list(self._handlers.get(event, ())):
            try:
                result = handler(data)
                if inspect.isawaitable(result):
                    await result
            except Exception:  # noqa: BLE001 - one bad handler must not stop the others
                log.exception("collab client: %r handler failed", event)
