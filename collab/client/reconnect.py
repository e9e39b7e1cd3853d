"""When to try reconnecting, and how many times: the loop after an unexpected disconnect."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from .errors import CollabError

log = logging.getLogger("collab.client")


#: One reconnection attempt: True once connected and recovered, False if the
#: recovery failed (the connection was dropped again); raises on a failed handshake.
Attempt = Callable[[], Awaitable[bool]]


class Reconnector:
    """The loop that runs after an unexpected disconnect: attempt ``n`` waits
    ``min(delay * n, delay_max)``, at most ``max_attempts`` in a row, then
    ``give_up(attempts)``. A success ends the loop, so the next loss counts from 1 again."""

    def __init__(self, delay: float, delay_max: float, max_attempts: int, attempt: Attempt,
                 give_up: Callable[[int], None]) -> None:
        self.delay = delay
        self.delay_max = delay_max
        self.max_attempts = max_attempts
        self._attempt = attempt
        self._give_up = give_up
        self._task: asyncio.Task | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the loop unless it runs already (a loss during an attempt feeds it)."""
        if not self.running:
            self._task = asyncio.create_task(self._run())

    def cancel(self) -> None:
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
        self._task = None

    async def _run(self) -> None:
        attempt = 0
        while True:
            attempt += 1
            if attempt > self.max_attempts:
                self._give_up(attempt - 1)
                return
            await asyncio.sleep(min(self.delay * attempt, self.delay_max))
            try:
                if await self._attempt():
                    return
            except CollabError as exc:
                log.info("reconnect attempt %d failed: %s %s", attempt, exc.code, exc.message)
            except Exception as exc:  # noqa: BLE001 - a failing token_provider: try again
                log.warning("reconnect attempt %d failed: %r", attempt, exc)
