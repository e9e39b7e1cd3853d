"""The turns of a connection's pipelined events (collab/pipeline.py), on their own:
the order they place and answer in, whatever happens to one of them."""

from __future__ import annotations

import asyncio

from collab.pipeline import NO_TURN, Turn, context_with, current_turn


async def run_turns(count: int, cancel: set[int] = frozenset(), early: set[int] = frozenset()):
    """``count`` tasks in one line, each placing then answering as the chat handler
    does; ``cancel``: tasks cancelled before their first step; ``early``: tasks that
    end (fail) before placing. What was placed and answered, in order."""
    placed: list[int] = []
    answered: list[int] = []
    release = asyncio.Event()

    async def event(index: int) -> None:
        turn = current_turn()
        if index in early:
            return
        await turn.wait_to_place()
        placed.append(index)
        turn.placed()
        await release.wait()
        await turn.wait_to_answer()
        answered.append(index)

    tasks, previous = [], None
    for index in range(count):
        turn = previous = Turn(previous)
        task = asyncio.get_running_loop().create_task(event(index), context=context_with(turn))
        task.add_done_callback(lambda _, t=turn: t.ended())
        tasks.append(task)
    for index in cancel:
        tasks[index].cancel()
    await asyncio.sleep(0)
    release.set()
    await asyncio.wait(tasks)
    return placed, answered


async def test_turns_place_and_answer_in_the_order_they_came():
    assert await run_turns(5) == ([0, 1, 2, 3, 4], [0, 1, 2, 3, 4])


async def test_a_turn_that_ends_before_placing_lets_the_next_one_go_in_order():
    assert await run_turns(4, early={1}) == ([0, 2, 3], [0, 2, 3])


async def test_a_task_cancelled_before_its_first_step_does_not_stop_the_line():
    assert await run_turns(4, cancel={1}) == ([0, 2, 3], [0, 2, 3])


async def test_a_turn_ended_early_waits_for_the_one_before_it():
    """Turn 1 ends while turn 0 has not placed yet: turn 2 still waits for turn 0."""
    first = Turn(None)
    second = Turn(first)
    third = Turn(second)
    second.ended()
    waiting = asyncio.ensure_future(third.wait_to_place())
    await asyncio.sleep(0)
    assert not waiting.done()
    first.placed()
    await asyncio.wait_for(waiting, 1)


def test_outside_a_pipelined_event_there_is_no_turn():
    assert current_turn() is NO_TURN
