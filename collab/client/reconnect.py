"""When to try reconnecting, and how many times: jittered exponential backoff and its loop.

Why not python-socketio's own reconnection (``AsyncClient(reconnection=True)`` with
``reconnection_delay``, ``reconnection_delay_max``, ``randomization_factor``):

- it does not reconnect after a server-side disconnect (a Socket.IO DISCONNECT
  packet), which is how collab ends a connection whose token expired or that an
  operator dropped; only a lost transport starts its loop;
- its jitter adds ``randomization_factor`` *seconds* (``delay += f * (2 * random() - 1)``),
  not a fraction as its docstring says: with the default 0.5 a delay may pass
  ``reconnection_delay_max`` by half a second, or drop below zero when the
  initial delay is short (python-socketio issue #893);
- our recovery (re-join the rooms, fetch what was missed with ``since_seq``) has
  to run right after the handshake, before anything else, and a recovery that
  fails has to count as a failed attempt and be retried; its loop ends at the
  handshake and has no such hook;
- a callable ``auth`` is awaited only if ``inspect.iscoroutinefunction`` says so
  (an object with an ``async __call__`` would send a coroutine), and one that
  raises turns into ``ConnectionError("Connect handler failed: <its text>")``,
  which looks like an unreachable server and is retried like one.

So each handshake is a single ``reconnection=False`` attempt, and the loop is here.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .errors import CollabError

log = logging.getLogger("collab.client")


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter upwards, within one step.

    Attempt ``n`` (from 1) waits a uniformly random time in
    ``[min(cap, initial * factor**(n-1)), min(cap, initial * factor**n)]``: from
    its own step up to the next one, never over ``cap``.

    Neither "full jitter" (``[0, step]``) nor "equal jitter" (``[step/2, step]``),
    because both lower the minimum: with full jitter part of the clients that a
    server restart drops together come straight back, while it is still starting,
    and ``initial`` would no longer mean "wait at least this long". Jittering
    upwards keeps the lower bound (so ``max_reconnect_attempts`` still bounds from
    below how long a client keeps trying), spreads each step over the whole gap to
    the next one, and keeps ``cap`` a real bound. Once at the cap every attempt
    waits ``cap`` exactly; the offsets gathered on the way up remain, so clients
    dropped together stay spread out.

    ``rng`` is injectable so that tests can seed it.
    """

    initial: float = 1.0
    factor: float = 2.0
    cap: float = 5.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.initial >= 0:
            raise ValueError(f"reconnect_delay must be >= 0, not {self.initial!r}")
        if not self.factor >= 1:
            raise ValueError(f"reconnect_factor must be >= 1, not {self.factor!r}")
        if not self.cap >= 0:
            raise ValueError(f"reconnect_delay_max must be >= 0, not {self.cap!r}")

    def bounds(self, attempt: int) -> tuple[float, float]:
        """The range attempt ``attempt`` (1, 2, ...) draws its delay from."""
        return self._step(attempt - 1), self._step(attempt)

    def delay(self, attempt: int) -> float:
        low, high = self.bounds(attempt)
        return self.rng.uniform(low, high)

    def _step(self, exponent: int) -> float:
        try:
            step = self.initial * self.factor ** max(0, exponent)
        except OverflowError:  # thousands of attempts: long past the cap
            return self.cap
        return min(self.cap, step)


#: One reconnection attempt: True once connected and recovered, False if the
#: recovery failed (the connection was dropped again); raises on a failed handshake.
Attempt = Callable[[], Awaitable[bool]]


class Reconnector:
    """The loop that runs after an unexpected disconnect: ``backoff`` between attempts,
    at most ``max_attempts`` in a row, then ``give_up(attempts)``. A success ends the
    loop, so the next loss counts from 1 again."""

    def __init__(self, backoff: Backoff, max_attempts: int, attempt: Attempt,
                 give_up: Callable[[int], None]) -> None:
        self.backoff = backoff
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
            await asyncio.sleep(self.backoff.delay(attempt))
            try:
                if await self._attempt():
                    return
            except CollabError as exc:
                log.info("reconnect attempt %d failed: %s %s", attempt, exc.code, exc.message)
            except Exception as exc:  # noqa: BLE001 - the loop must outlive a surprise
                log.warning("reconnect attempt %d failed: %s", attempt, type(exc).__name__)
