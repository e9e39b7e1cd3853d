"""A connection's chat messages in the store together, in the order they were sent.

A connection's events are handled one at a time (python-socketio with
``async_handlers=False``): each waits until the one before it has been
answered. For ``chat:message`` that wait is the store's commit, so a client
with many messages to send had one in the store at a time, and a saturated
room's group commits and broadcast passes stayed small (bench/README.md).

An event named pipelined (:class:`collab.sioserver.GuardedServer`) runs as a
task of its own instead, up to a depth per connection, each with a
:class:`Turn` in the connection's line. Two points of its handling keep the
order the client sent: placing it in the store (:meth:`Turn.wait_to_place`,
then :meth:`Turn.placed`), and answering it (:meth:`Turn.wait_to_answer`, in the
dispatcher: the ack and any ``error`` event leave after the earlier ones').
Everything between (the commit) overlaps. Any other event of the connection
waits until its pipelined events have been answered, so it sees them done, as
before.

This needs a store that takes writes in call order, synchronously up to its
first suspension (``Store.writes_in_call_order``: SQLite's group commit
queue); on any other the depth is 1 and nothing changes.

The turn of the running event is in a context variable: the task is created
with it, and it reaches the dispatcher and the handler through python-socketio's
dispatch, which has no way to pass anything else along. (Tasks the handler
starts inherit it; nothing there reads it.)

What a client can tell: acks (and ``error`` events) come in the order sent,
and each event's own broadcast comes before its ack; but the broadcast of a
later message may come before the ack of an earlier one (the room's line sends
both broadcasts in one pass, before the earlier handler resumes to answer).
"""

from __future__ import annotations

import asyncio
import contextvars


class Turn:
    """One pipelined event's place in its connection's line."""

    __slots__ = ("_previous", "_placed", "_answered")

    def __init__(self, previous: Turn | None) -> None:
        loop = asyncio.get_running_loop()
        #: the turn before this one, until this one ends (no chain of ended turns)
        self._previous = previous
        self._placed: asyncio.Future[None] = loop.create_future()
        self._answered: asyncio.Future[None] = loop.create_future()

    async def wait_to_place(self) -> None:
        """Until the connection's previous event has placed its write (or ended)."""
        previous = self._previous
        if previous is not None and not previous._placed.done():
            await asyncio.shield(previous._placed)

    def placed(self) -> None:
        """This event's write is placed: the next one may place its own.

        Called right before awaiting the store call: the next event resumes in a
        later pass of the event loop, after this one's store call has run to its
        first suspension, by which the store has queued the write.
        """
        if not self._placed.done():
            self._placed.set_result(None)

    async def wait_to_answer(self) -> None:
        """Until the connection's previous event has been answered."""
        previous = self._previous
        if previous is not None and not previous._answered.done():
            await asyncio.shield(previous._answered)

    def ended(self) -> None:
        """The event's task is done: the next one may place and answer, once the
        previous one may (a task cancelled before its place, at a shutdown, must not
        let the next one overtake the one before it)."""
        previous, self._previous = self._previous, None
        _follow(self._placed, previous._placed if previous is not None else None)
        _follow(self._answered, previous._answered if previous is not None else None)


def _follow(future: asyncio.Future[None], after: asyncio.Future[None] | None) -> None:
    """Resolve ``future`` now, or once ``after`` is."""
    if future.done():
        return
    if after is None or after.done():
        future.set_result(None)
    else:
        after.add_done_callback(lambda _: future.done() or future.set_result(None))


class _NoTurn:
    """The turn of an event that is not pipelined: nothing to wait for."""

    __slots__ = ()

    async def wait_to_place(self) -> None:
        return None

    def placed(self) -> None:
        return None

    async def wait_to_answer(self) -> None:
        return None


NO_TURN = _NoTurn()

_current: contextvars.ContextVar[Turn | None] = contextvars.ContextVar("turn", default=None)


def current_turn() -> Turn | _NoTurn:
    """The running event's turn (:data:`NO_TURN` outside a pipelined event)."""
    return _current.get() or NO_TURN


def context_with(turn: Turn) -> contextvars.Context:
    """A copy of the current context in which ``turn`` is the running event's."""
    context = contextvars.copy_context()
    context.run(_current.set, turn)
    return context
