"""Broadcast stored items in store order without serializing the store calls.

A chat's messages must reach its room in ``seq`` order (a document's updates
in ``version`` order), but holding a lock from the store call to the broadcast
lets one message per store round trip through, and keeps the store from ever
seeing two writes at once (so SQLite cannot commit them together).
:class:`Sequencer` lets the store calls overlap and orders only the broadcasts.

The rule it relies on: a call that *starts* after another one has *completed*
gets a higher position. That holds for a message's seq in every store here
(SQLite's single writer, MongoDB's ``max + 1`` under a unique index) and for a
document's version (a compare-and-set on the previous one). So when a call
completes, only the calls already started and still running can end up below
it; once those are done, and every lower completed item is out, it can go.

Each call takes a ticket before the store call (:meth:`Sequencer.begin`) and
then either releases an action at its position (:meth:`Ticket.release`) or
cancels the ticket (the call failed, or stored nothing new).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Awaitable, Callable
from typing import Any

Action = Callable[[], Awaitable[Any]]
log = logging.getLogger("collab.sequencer")


def _stopping() -> bool:
    """Whether the current task itself is being cancelled (not just something it awaited).

    Python 3.10 cannot tell the two apart; there any cancellation counts as a stop.
    """
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return cancelling is None or cancelling() > 0


class _Key:
    __slots__ = ("running", "ready", "draining")

    def __init__(self) -> None:
        #: tickets started and not yet completed, in start order (dicts keep it)
        self.running: dict[int, None] = {}
        #: completed: (position, ticket, newest ticket started before it completed, action, done)
        self.ready: list[tuple[int, int, int, Action, asyncio.Future[None]]] = []
        self.draining = False


class Ticket:
    """One store call's place in line; release or cancel it exactly once.

    As a context manager, leaving the block cancels it unless it was released
    (an exception, or nothing new to broadcast).
    """

    __slots__ = ("_sequencer", "_key", "number", "_open")

    def __init__(self, sequencer: Sequencer, key: str, number: int) -> None:
        self._sequencer = sequencer
        self._key = key
        self.number = number
        self._open = True

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cancel()

    async def release(self, position: int, action: Action) -> None:
        """Run ``action`` once every item below ``position`` has run; wait for it.

        Raises what ``action`` raised (for this ticket only; the line moves on).
        If the caller is cancelled while waiting, the action still runs in turn.
        """
        if not self._open:
            raise RuntimeError("ticket already used")
        self._open = False
        await self._sequencer._complete(self._key, self.number, position, action)

    def cancel(self) -> None:
        """Leave the line without an action (the call failed or stored nothing new)."""
        if self._open:
            self._open = False
            self._sequencer._cancel(self._key, self.number)


class Sequencer:
    """Per key (a room): runs each completed call's action in position order.

    One action per key runs at a time. The caller whose item is next runs it
    itself (the common case: no task, no extra loop pass); items that had to
    wait are run by a task of the key's own, so no caller is held up by, or
    cancelled in the middle of, somebody else's action.
    """

    def __init__(self) -> None:
        self._keys: dict[str, _Key] = {}
        #: the newest ticket handed out; tickets are numbered from 1 in start order
        self._last_number = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._keys)

    def begin(self, key: str) -> Ticket:
        """Take a ticket before the store call starts."""
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _Key()
        self._last_number += 1
        number = self._last_number
        state.running[number] = None
        return Ticket(self, key, number)

    async def _complete(self, key: str, number: int, position: int, action: Action) -> None:
        state = self._keys[key]
        del state.running[number]
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(state.ready, (position, number, self._last_number, action, done))
        if state.draining or not self._releasable(state) or state.ready[0][4] is not done:
            self._kick(key, state)
            await done
            return
        heapq.heappop(state.ready)  # ours is next and nothing else is going out
        state.draining = True
        try:
            await action()
        finally:
            state.draining = False
            self._kick(key, state)

    def _cancel(self, key: str, number: int) -> None:
        state = self._keys[key]
        del state.running[number]
        self._kick(key, state)

    @staticmethod
    def _releasable(state: _Key) -> bool:
        if not state.ready:
            return False
        barrier = state.ready[0][2]
        # the oldest running ticket is the first key: dicts keep insertion order
        return not state.running or next(iter(state.running)) > barrier

    def _kick(self, key: str, state: _Key) -> None:
        """Start the key's drain task if something can go and nothing is going out."""
        if state.draining:
            return
        if not self._releasable(state):
            self._forget_if_idle(key, state)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a coroutine closed outside its loop: nothing can run now
            return
        state.draining = True
        task = loop.create_task(self._drain(key, state))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self, key: str, state: _Key) -> None:
        done: asyncio.Future[None] | None = None
        try:
            while self._releasable(state):
                _, _, _, action, done = heapq.heappop(state.ready)
                try:
                    await action()
                except asyncio.CancelledError:
                    if _stopping():
                        raise
                    done.cancel()  # something the action awaited was cancelled: this item only
                except Exception as exc:  # noqa: BLE001 - reported to its own caller
                    if done.done():
                        log.warning("broadcast in %s failed after its caller left: %r", key, exc)
                    else:
                        done.set_exception(exc)
                else:
                    if not done.done():
                        done.set_result(None)
        except asyncio.CancelledError:
            # this task was cancelled: the server is stopping and nothing else will send these
            for *_, waiting in state.ready:
                waiting.cancel()
            state.ready.clear()
            if done is not None:
                done.cancel()
            raise
        finally:
            state.draining = False
            self._kick(key, state)

    def _forget_if_idle(self, key: str, state: _Key) -> None:
        if not state.running and not state.ready and not state.draining \
                and self._keys.get(key) is state:
            del self._keys[key]
