"""Stopping background tasks (collab/tasks.py): a lost cancellation is not a hang."""

from __future__ import annotations

import asyncio
import time

import pytest

from collab.tasks import RECANCEL_AFTER, cancel_and_wait


async def _swallowing_loop(futures: list[asyncio.Future[None]]) -> None:
    """A loop like the registry's heartbeat: every turn awaits ``wait_for``, as redis-py
    does for every command it sends."""
    loop = asyncio.get_running_loop()
    while True:
        future = loop.create_future()
        futures.append(future)
        await asyncio.wait_for(future, 10)


async def test_a_task_that_lost_its_cancellation_is_cancelled_again():
    futures: list[asyncio.Future[None]] = []
    task = asyncio.ensure_future(_swallowing_loop(futures))
    await asyncio.sleep(0)
    # the command's reply and the cancellation arrive in the same turn of the loop:
    # Python 3.11's wait_for returns the reply and drops the cancellation
    futures[-1].set_result(None)
    await asyncio.sleep(0)
    started = time.monotonic()
    stopping = asyncio.ensure_future(cancel_and_wait(task))
    for _ in range(3):  # the next replies come back at once
        await asyncio.sleep(0)
        if not futures[-1].done():
            futures[-1].set_result(None)
    await asyncio.wait_for(stopping, 5)
    assert task.cancelled()
    assert time.monotonic() - started < RECANCEL_AFTER * 4


async def test_the_callers_own_cancellation_is_not_swallowed():
    async def stubborn() -> None:  # ignores its first cancellation, as a lost one would
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(10)

    task = asyncio.ensure_future(stubborn())
    await asyncio.sleep(0)
    stopping = asyncio.ensure_future(cancel_and_wait(task))
    await asyncio.sleep(0)
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    await cancel_and_wait(task)
    assert task.cancelled()


async def test_none_finished_and_failed_tasks_are_fine(caplog):
    async def fails() -> None:
        raise ValueError("the end of a connection")

    done = asyncio.ensure_future(asyncio.sleep(0))
    await done
    failed = asyncio.ensure_future(fails())
    await asyncio.wait([failed])
    with caplog.at_level("DEBUG", logger="collab"):
        await cancel_and_wait(None, done, failed)  # raises nothing
    assert done.done() and isinstance(failed.exception(), ValueError)
    assert "ended with an error" in caplog.text
