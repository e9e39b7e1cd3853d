"""Acked calls: emit an event, wait for its acknowledgement in order, or fail clearly.

An ack settles its call through the dispatcher's queue, after the events that
arrived before it, so the caller resumes after their handlers ran. A call made
from inside the dispatcher (a handler's ``emit``, the recovery) settles at once
instead: the dispatcher is busy waiting for it and would never reach the queue.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import socketio

from .dispatch import Dispatcher
from .errors import DISCONNECTED, AckTimeout, CollabError
from .transport import Link, Transport

log = logging.getLogger("collab.client")

OnAck = Callable[[Any], Awaitable[None]]


class Calls:
    """Calls on the transport's current link, and the ones still waiting for an ack."""

    def __init__(self, transport: Transport, dispatcher: Dispatcher,
                 ack_timeout: float) -> None:
        self._transport = transport
        self._dispatcher = dispatcher
        self.ack_timeout = ack_timeout
        # future -> (the link it was sent on, settled directly rather than via the queue)
        self._pending: dict[asyncio.Future, tuple[Link, bool]] = {}

    async def call(self, event: str, data: Any, deadline: float | None = None,
                   on_ack: OnAck | None = None) -> Any:
        """Emit and return the raw ack; ``on_ack(ack)`` runs in the dispatcher first.
        Raises ``DISCONNECTED`` (not connected, or lost before the ack) or
        :class:`AckTimeout` at ``deadline`` (loop time; default ``ack_timeout`` from now)."""
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = loop.time() + self.ack_timeout
        link = self._transport.link
        if link is None or not link.connected or not self._transport.online.is_set():
            raise CollabError(DISCONNECTED, "Not connected")
        fut: asyncio.Future = loop.create_future()
        direct = self._dispatcher.inside

        def acked(*args: Any) -> None:
            ack = args[0] if args else None
            if fut.done():
                return
            if direct:
                fut.set_result(ack)
            else:
                self._dispatcher.put(partial(self._settle, fut, ack, on_ack))

        self._pending[fut] = (link, direct)
        log.debug("emit %s", event)  # not the data: auth:refresh carries a token
        try:
            try:
                await link.emit(event, data, callback=acked)
            except socketio.exceptions.SocketIOError:
                raise CollabError(DISCONNECTED, "Not connected") from None
            try:
                ack = await asyncio.wait_for(fut, max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise AckTimeout(f"No acknowledgement for {event!r} in time") from None
        finally:
            self._pending.pop(fut, None)
        if direct and on_ack is not None:
            await on_ack(ack)
        return ack

    def fail_pending(self, link: Link | None, direct_only: bool = False) -> None:
        """Calls sent on ``link`` (any, if None) lose their ack. Direct ones fail at once:
        the dispatcher is blocked on them; queued ones in turn, after earlier acks."""
        for fut, (on, direct) in list(self._pending.items()):
            if (link is None or on is link) and (direct or not direct_only) and not fut.done():
                fut.set_exception(CollabError(DISCONNECTED, "Connection lost"))

    @staticmethod
    async def _settle(fut: asyncio.Future, ack: Any, on_ack: OnAck | None) -> None:
        if fut.done():
            return  # timed out or lost meanwhile
        if on_ack is not None:
            await on_ack(ack)
        if not fut.done():
            fut.set_result(ack)


def unwrap(ack: Any) -> dict[str, Any]:
    """An ack's result fields (without ``ok``), or its error raised as :class:`CollabError`."""
    if not isinstance(ack, dict) or "ok" not in ack:
        raise CollabError("INTERNAL_ERROR", "Malformed acknowledgement", {"ack": ack})
    if ack["ok"] is True:
        return {key: value for key, value in ack.items() if key != "ok"}
    raise CollabError.from_dict(ack.get("error"))
