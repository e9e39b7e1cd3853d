"""LeanQueue (collab/queues.py): the asyncio.Queue behaviour Engine.IO and the Tornado
handler rely on, holding nothing while empty."""

from __future__ import annotations

import asyncio

import pytest

from collab.queues import LeanQueue
from collab.sioserver import CountingQueue


async def test_items_come_out_in_order_and_an_empty_queue_holds_no_deque():
    q = LeanQueue()
    assert q.empty() and q.qsize() == 0 and q._items is None
    for i in range(3):
        await q.put(i)
    assert q.qsize() == 3 and not q.empty()
    assert [q.get_nowait() for _ in range(3)] == [0, 1, 2]
    assert q._items is None  # dropped with the last item
    with pytest.raises(asyncio.QueueEmpty):
        q.get_nowait()


async def test_get_waits_for_a_put_and_getters_are_served_oldest_first():
    q = LeanQueue()
    first = asyncio.ensure_future(q.get())
    second = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)  # both are waiting now
    assert not first.done() and not second.done()
    q.put_nowait("a")
    q.put_nowait("b")
    assert await first == "a"
    assert await second == "b"
    assert q._getters is None


async def test_a_cancelled_get_takes_nothing_and_passes_a_wake_up_on():
    q = LeanQueue()
    first = asyncio.ensure_future(q.get())
    second = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)
    q.put_nowait("x")  # wakes the first getter ...
    first.cancel()  # ... which is cancelled before it runs: the second gets the item
    assert await second == "x"
    with pytest.raises(asyncio.CancelledError):
        await first
    assert q.empty() and q._getters is None


async def test_a_get_timed_out_by_wait_for_leaves_no_waiter_behind():
    q = LeanQueue()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(q.get(), 0.01)
    assert q._getters is None
    q.put_nowait(1)
    assert await asyncio.wait_for(q.get(), 1) == 1


async def test_join_returns_when_every_item_is_done():
    q = LeanQueue()
    await q.join()  # nothing unfinished
    q.put_nowait(1)
    q.put_nowait(2)
    joined = asyncio.ensure_future(q.join())
    q.get_nowait()
    q.task_done()
    await asyncio.sleep(0)
    assert not joined.done() and q._unfinished_tasks == 1
    q.get_nowait()
    q.task_done()
    await asyncio.wait_for(joined, 1)
    with pytest.raises(ValueError):
        q.task_done()


async def test_the_engineio_queue_counts_the_bytes_it_holds():
    from engineio import packet

    q = CountingQueue()
    q.put_nowait(packet.Packet(packet.MESSAGE, data="hello"))
    q.put_nowait(packet.Packet(packet.MESSAGE, data=b"\x00\x01"))
    q.put_nowait(None)  # the end of the session
    assert q.bytes == 7
    q.get_nowait()
    assert q.bytes == 2
    q.get_nowait()
    q.get_nowait()
    assert q.bytes == 0 and q.empty()
