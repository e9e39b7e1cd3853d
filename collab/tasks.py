"""Stopping background tasks for good.

A cancellation can be lost on Python 3.11: ``asyncio.wait_for`` returns its inner
future's result instead of raising when the cancel arrives in the same turn of the
loop as that result (CPython gh-86296, fixed in 3.12 by rewriting ``wait_for`` on
``asyncio.timeout``). redis-py awaits ``wait_for`` in every command it sends, so a
heartbeat or listener loop cancelled at that moment carries on as if nothing had
happened, and ``task.cancel(); await task`` waits for it forever. Wrapping that in
``suppress(CancelledError)`` made it worse: the caller's own cancellation (a
shutdown deadline, a test's timeout) was swallowed too.
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("collab")

#: seconds a cancelled task gets to finish before it is cancelled again
RECANCEL_AFTER = 0.25


async def cancel_and_wait(*tasks: asyncio.Future[object] | None) -> None:
    """Cancel ``tasks`` (``None`` entries are skipped) and return once all have ended.

    A task still running ``RECANCEL_AFTER`` seconds after its cancellation lost it
    (see the module docstring) and is cancelled again. The caller's own cancellation
    propagates. An exception a task ended with is retrieved and logged at debug
    level: the loops stopped here report their own failures as they happen, and what
    is left at shutdown is a connection's end.
    """
    given = [task for task in tasks if task is not None]
    pending = {task for task in given if not task.done()}
    for task in pending:
        task.cancel()
    while pending:
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_AFTER)
        for task in pending:
            task.cancel()
    for task in given:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            log.debug("background task %s ended with an error", task.get_name(),
                      exc_info=error)
