"""collab/sequencer.py: broadcasts leave in store order while the store calls overlap."""

from __future__ import annotations

import asyncio

import pytest

from collab.sequencer import Sequencer


def recorder(out: list, item):
    async def action() -> None:
        out.append(item)
    return action


async def test_completions_out_of_order_run_in_position_order() -> None:
    seq = Sequencer()
    out: list[int] = []
    first, second, third = seq.begin("room"), seq.begin("room"), seq.begin("room")
    # the third call completes first with the highest position, then the first...
    late = asyncio.ensure_future(third.release(3, recorder(out, 3)))
    await asyncio.sleep(0)
    assert out == [] and not late.done()  # two earlier calls still running
    waiting = asyncio.ensure_future(second.release(2, recorder(out, 2)))
    await asyncio.sleep(0)
    assert out == []
    await first.release(1, recorder(out, 1))
    await asyncio.gather(late, waiting)
    assert out == [1, 2, 3]
    assert len(seq) == 0  # nothing kept once the line is empty


async def test_a_call_started_after_a_completion_does_not_hold_it() -> None:
    seq = Sequencer()
    out: list[int] = []
    first = seq.begin("room")
    await first.release(1, recorder(out, 1))
    second = seq.begin("room")  # still running; it can only end up above 1
    third = seq.begin("room")
    blocked = asyncio.ensure_future(third.release(3, recorder(out, 3)))
    await asyncio.sleep(0)
    assert out == [1] and not blocked.done()
    second.cancel()  # failed, or a duplicate: nothing to broadcast
    await asyncio.wait_for(blocked, 1)
    assert out == [1, 3]
    assert len(seq) == 0


async def test_a_lower_position_that_completes_later_still_goes_first() -> None:
    seq = Sequencer()
    out: list[int] = []
    a, b = seq.begin("room"), seq.begin("room")
    # b completes first but its store call finished with the higher position;
    # a, still running when b completed, might be below it: b waits for a.
    blocked = asyncio.ensure_future(b.release(8, recorder(out, 8)))
    await asyncio.sleep(0)
    assert out == []
    await a.release(7, recorder(out, 7))
    await blocked
    assert out == [7, 8]


async def test_rooms_do_not_wait_for_each_other() -> None:
    seq = Sequencer()
    out: list[str] = []
    seq.begin("busy")  # never completes within this test
    other = seq.begin("quiet")
    await asyncio.wait_for(other.release(1, recorder(out, "quiet")), 1)
    assert out == ["quiet"]


async def test_a_failing_action_fails_its_own_caller_only() -> None:
    seq = Sequencer()
    out: list[int] = []
    a, b, c = seq.begin("room"), seq.begin("room"), seq.begin("room")

    async def boom() -> None:
        raise RuntimeError("emit failed")

    later = [asyncio.ensure_future(b.release(2, boom)),
             asyncio.ensure_future(c.release(3, recorder(out, 3)))]
    await asyncio.sleep(0)
    await a.release(1, recorder(out, 1))
    results = await asyncio.gather(*later, return_exceptions=True)
    assert isinstance(results[0], RuntimeError) and results[1] is None
    assert out == [1, 3]
    assert len(seq) == 0


async def test_a_ticket_is_used_once() -> None:
    seq = Sequencer()
    ticket = seq.begin("room")
    await ticket.release(1, recorder([], 1))
    with pytest.raises(RuntimeError):
        await ticket.release(2, recorder([], 2))
    ticket.cancel()  # harmless after use
    assert len(seq) == 0


async def test_a_cancelled_drainer_hands_the_rest_on() -> None:
    """The caller running the line is cancelled in the middle of an action: the
    items behind it still run, in order."""
    seq = Sequencer()
    out: list[int] = []
    gate = asyncio.Event()
    a, b = seq.begin("room"), seq.begin("room")

    async def slow() -> None:
        await gate.wait()
        out.append(1)

    waiting = asyncio.ensure_future(b.release(2, recorder(out, 2)))
    await asyncio.sleep(0)
    drainer = asyncio.ensure_future(a.release(1, slow))
    await asyncio.sleep(0)
    drainer.cancel()
    await asyncio.wait_for(waiting, 1)
    assert out == [2]  # 1's action was cancelled; 2 was not held behind it
    assert len(seq) == 0
