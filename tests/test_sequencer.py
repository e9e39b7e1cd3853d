"""collab/broadcast/sequencer.py: broadcasts leave in store order while store calls overlap."""

from __future__ import annotations

import asyncio
import sys

import pytest

from collab.broadcast.sequencer import Sequencer


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


async def test_a_later_call_does_not_hold_what_completed_before_it_began() -> None:
    """Only calls started before an item completed can hold it: a call started
    afterwards (it can only end up above) does not, even while it runs."""
    seq = Sequencer()
    out: list[int] = []
    a, b = seq.begin("room"), seq.begin("room")
    waiting = asyncio.ensure_future(b.release(2, recorder(out, 2)))
    await asyncio.sleep(0)
    assert out == []  # a might still end up below 2
    c = seq.begin("room")  # started after b completed
    a.cancel()
    await asyncio.wait_for(waiting, 1)
    assert out == [2]  # while c is still running
    await c.release(3, recorder(out, 3))
    assert out == [2, 3]
    assert len(seq) == 0


async def test_one_action_at_a_time_per_room() -> None:
    """Actions that suspend (a Redis publish does) never overlap within a room,
    however the line gets moving again (a cancel, a completion)."""
    seq = Sequencer()
    out: list[int] = []
    active = 0

    def slow(item: int):
        async def action() -> None:
            nonlocal active
            active += 1
            assert active == 1, "two actions of one room at once"
            for _ in range(3):
                await asyncio.sleep(0)
            out.append(item)
            active -= 1
        return action

    a, b = seq.begin("room"), seq.begin("room")
    later = [asyncio.ensure_future(b.release(2, slow(2)))]
    await asyncio.sleep(0)  # b completed; a may still end up below it
    c, d = seq.begin("room"), seq.begin("room")
    # c's first step runs ahead of anything a's cancel schedules
    later.append(asyncio.ensure_future(c.release(3, slow(3))))
    a.cancel()  # b can go now
    await asyncio.sleep(0)
    later.append(asyncio.ensure_future(d.release(4, slow(4))))
    await asyncio.wait_for(asyncio.gather(*later), 1)
    assert out == [2, 3, 4]
    assert len(seq) == 0


async def test_a_waiting_caller_that_is_cancelled_still_gets_its_item_out() -> None:
    """The message is stored: its broadcast goes out in turn even if the request's
    task is cancelled while it waits."""
    seq = Sequencer()
    out: list[int] = []
    a, b = seq.begin("room"), seq.begin("room")
    waiting = asyncio.ensure_future(b.release(2, recorder(out, 2)))
    await asyncio.sleep(0)
    waiting.cancel()
    await a.release(1, recorder(out, 1))
    for _ in range(5):  # the room's own task sends 2
        await asyncio.sleep(0)
    assert out == [1, 2]
    assert len(seq) == 0


async def test_a_caller_cancelled_during_its_own_action_does_not_hold_the_line() -> None:
    seq = Sequencer()
    out: list[int] = []
    gate = asyncio.Event()
    a, b = seq.begin("room"), seq.begin("room")

    async def stuck() -> None:
        await gate.wait()
        out.append(1)

    waiting = asyncio.ensure_future(b.release(2, recorder(out, 2)))
    await asyncio.sleep(0)
    running = asyncio.ensure_future(a.release(1, stuck))  # a's item is next: a runs it
    await asyncio.sleep(0)
    running.cancel()
    await asyncio.wait_for(waiting, 1)
    assert out == [2]  # 1's action was cancelled with its caller; 2 was not held behind it
    assert len(seq) == 0


async def test_leaving_the_block_without_release_cancels() -> None:
    seq = Sequencer()
    out: list[int] = []
    later = seq.begin("room")
    blocked = asyncio.ensure_future(later.release(2, recorder(out, 2)))
    with pytest.raises(ValueError), seq.begin("room"):
        raise ValueError("the store call failed")
    # the failed call began before `later` completed (release has not run yet),
    # so it held it; leaving the block cancelled the ticket and let it go
    await asyncio.wait_for(blocked, 1)
    first = seq.begin("room")
    third = seq.begin("room")
    blocked = asyncio.ensure_future(third.release(4, recorder(out, 4)))
    await asyncio.sleep(0)
    assert not blocked.done()
    with first:  # nothing new to broadcast (a repeated client_id)
        pass
    await asyncio.wait_for(blocked, 1)
    assert out == [2, 4]
    assert len(seq) == 0


async def test_a_caller_running_its_own_item_keeps_the_room_task_waiting() -> None:
    """While a caller's own action is suspended, items that became releasable
    meanwhile wait for it; they do not overtake it from the room's task."""
    seq = Sequencer()
    out: list[int] = []
    gate = asyncio.Event()
    a, b, c = seq.begin("room"), seq.begin("room"), seq.begin("room")

    async def held() -> None:
        await gate.wait()
        out.append(1)

    first = asyncio.ensure_future(a.release(1, held))  # a's item is next: a runs it
    await asyncio.sleep(0)
    waiting = asyncio.ensure_future(c.release(3, recorder(out, 3)))
    await asyncio.sleep(0)
    b.cancel()  # 3 is releasable now, but 1 is still going out
    for _ in range(5):
        await asyncio.sleep(0)
    assert out == [] and not waiting.done()
    gate.set()
    await asyncio.wait_for(asyncio.gather(first, waiting), 1)
    assert out == [1, 3]
    assert len(seq) == 0


@pytest.mark.skipif(sys.version_info < (3, 11), reason="3.10 cannot tell the cases apart")
async def test_an_action_that_raises_cancelled_fails_its_own_item_only() -> None:
    """A CancelledError out of an action (something it awaited was cancelled) is
    not the server stopping: the items behind it still go out."""
    seq = Sequencer()
    out: list[int] = []
    a, b, c = seq.begin("room"), seq.begin("room"), seq.begin("room")

    async def cancelled() -> None:
        raise asyncio.CancelledError

    later = [asyncio.ensure_future(b.release(2, cancelled)),
             asyncio.ensure_future(c.release(3, recorder(out, 3)))]
    await asyncio.sleep(0)
    a.cancel()  # 2 and 3 go out from the room's task
    results = await asyncio.wait_for(asyncio.gather(*later, return_exceptions=True), 1)
    assert isinstance(results[0], asyncio.CancelledError) and results[1] is None
    assert out == [3]
    assert len(seq) == 0
