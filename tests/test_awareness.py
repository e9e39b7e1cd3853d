"""collab.awareness.RoomAwareness: the y-protocols clock rule, per-connection
announcements, removal, bounds and malformed input; against real y-protocols."""

from __future__ import annotations

import json
import random

import pytest

from collab.awareness import (
    MAX_IDS_PER_CONNECTION,
    MAX_STATE_BYTES,
    Entry,
    RoomAwareness,
    decode_update,
    encode_update,
)
from collab.errors import InvalidInput, PayloadTooLarge
from collab.lib0 import var_string, var_uint


def update(*entries: tuple[int, int, object]) -> bytes:
    """An awareness update from ``(client_id, clock, state)``; state None = removed."""
    return encode_update([
        Entry(cid, clock, None if state is None else json.dumps(state))
        for cid, clock, state in entries
    ])


def decoded(data: bytes | None) -> list[tuple[int, int, object]]:
    assert data is not None
    return [(e.client_id, e.clock, None if e.state is None else json.loads(e.state))
            for e in decode_update(data)]


# -- the format, against y-protocols ------------------------------------------------------

def test_y_protocols_updates_decode_and_ours_apply_in_y_protocols(yjs):
    state = {"user": {"name": "Zoë 😀", "color": "#f00"}, "cursor": {"anchor": 3}}
    sent = yjs.call("aw_new", name="alice", client_id=101)
    sent = yjs.call("aw_set", name="alice", state=state)
    assert decoded(sent["update"]) == [(101, 1, state)]
    room = RoomAwareness()
    relayed = room.apply("conn-a", sent["update"])
    assert relayed == sent["update"]  # relayed byte for byte
    yjs.call("aw_new", name="bob", client_id=202)
    seen = yjs.call("aw_apply", name="bob", update=room.encode_all())["states"]
    assert seen["101"] == {"clock": 1, "state": state}
    removal = room.remove_connection("conn-a")
    seen = yjs.call("aw_apply", name="bob", update=removal)["states"]
    assert seen["101"]["state"] is None  # y-protocols took our removal


def test_after_a_removal_the_clients_next_renewal_is_accepted_by_peers(yjs):
    # removal keeps the clock (as y-websocket's server does), so a client that comes
    # back is visible again at its next renewal (clock + 1) on every y-protocols peer
    yjs.call("aw_new", name="carol", client_id=303)
    first = yjs.call("aw_set", name="carol", state={"n": 1})["update"]
    yjs.call("aw_new", name="dave", client_id=404)
    room = RoomAwareness()
    yjs.call("aw_apply", name="dave", update=room.apply("c1", first))
    yjs.call("aw_apply", name="dave", update=room.remove_connection("c1"))
    assert room.apply("c2", first) is None  # the old state again: not newer
    renewal = yjs.call("aw_set", name="carol", state={"n": 1})["update"]
    relayed = room.apply("c2", renewal)
    assert relayed is not None and room.announced("c2") == {303}
    seen = yjs.call("aw_apply", name="dave", update=relayed)["states"]
    assert seen["303"] == {"clock": 2, "state": {"n": 1}}


def test_a_y_protocols_removal_of_its_own_state_is_accepted(yjs):
    yjs.call("aw_new", name="erin", client_id=505)
    room = RoomAwareness()
    room.apply("e", yjs.call("aw_set", name="erin", state={"x": 1})["update"])
    gone = yjs.call("aw_set", name="erin", state=None)["update"]  # setLocalState(null)
    assert decoded(room.apply("e", gone)) == [(505, 2, None)]
    assert len(room) == 0 and room.announced("e") == frozenset()
    assert room.remove_connection("e") is None


def test_encode_round_trips_unicode_byte_lengths():
    state = json.dumps({"name": "日本語 😀 é"}, ensure_ascii=False)
    data = encode_update([Entry(7, 3, state)])
    assert decode_update(data) == [Entry(7, 3, state)]
    assert var_string(state)[0] == len(state.encode())  # bytes, not code points


# -- the clock rule -------------------------------------------------------------------

@pytest.mark.parametrize("known,incoming,accepted", [
    (None, (1, 0, {"a": 1}), False),  # unknown client counts as clock 0: 0 is not newer
    (None, (1, 1, {"a": 1}), True),
    ((1, 5, {"a": 1}), (1, 4, {"a": 2}), False),  # older
    ((1, 5, {"a": 1}), (1, 5, {"a": 2}), False),  # same clock with a state
    ((1, 5, {"a": 1}), (1, 5, None), True),  # same clock, null: removal
    ((1, 5, {"a": 1}), (1, 6, {"a": 2}), True),  # newer
    ((1, 5, {"a": 1}), (1, 6, None), True),
])
def test_clock_rule(known, incoming, accepted):
    room = RoomAwareness()
    if known:
        assert room.apply("owner", update(known)) is not None
    relayed = room.apply("sender", update(incoming))
    assert (relayed is not None) is accepted
    if accepted:
        assert decoded(relayed) == [incoming]


def test_clock_rule_matches_y_protocols_entry_by_entry(yjs):
    rng = random.Random(5)
    room = RoomAwareness()
    yjs.call("aw_new", name="judge", client_id=999_999)
    for step in range(300):
        cid = rng.choice([1, 2, 3])
        clock = rng.randint(0, 6)
        state = None if rng.random() < 0.3 else {"step": step}
        room.apply(rng.choice(["a", "b"]), update((cid, clock, state)))
        theirs = yjs.call("aw_apply", name="judge", update=update((cid, clock, state)))["states"]
        ours = room.states()
        present = {int(k): v for k, v in theirs.items()
                   if v["state"] is not None and k != "999999"}  # not the judge's own
        assert {k: (v["clock"], v["state"]) for k, v in present.items()} == \
            {k: (clock, json.loads(state)) for k, (clock, state) in ours.items()}


def test_several_entries_for_one_client_in_one_update_apply_in_order():
    room = RoomAwareness()
    relayed = room.apply("a", update((1, 1, {"v": 1}), (1, 3, {"v": 3}), (1, 2, {"v": 2})))
    assert decoded(relayed) == [(1, 1, {"v": 1}), (1, 3, {"v": 3})]
    assert room.states() == {1: (3, json.dumps({"v": 3}))}


# -- announcements and removal ---------------------------------------------------------------

def test_a_connection_announces_only_what_was_accepted_from_it():
    room = RoomAwareness()
    room.apply("a", update((1, 1, {"me": "a"})))
    room.apply("b", update((2, 1, {"me": "b"})))
    # b re-sends a's state it received: same clock, so not accepted, announces nothing
    assert room.apply("b", update((1, 1, {"me": "a"}), (2, 2, {"me": "b2"}))) == \
        update((2, 2, {"me": "b2"}))
    assert room.announced("a") == {1} and room.announced("b") == {2}
    assert decoded(room.remove_connection("b")) == [(2, 2, None)]
    assert room.states() == {1: (1, json.dumps({"me": "a"}))}
    assert room.remove_connection("b") is None


def test_removal_removes_every_id_the_connection_announced_at_once():
    room = RoomAwareness()
    room.apply("tab", update((10, 4, {"doc": 1}), (11, 1, {"doc": 2})))
    room.apply("other", update((12, 1, {})))
    assert decoded(room.remove_connection("tab")) == [(10, 4, None), (11, 1, None)]
    assert set(room.states()) == {12}
    assert decoded(room.encode_all()) == [(12, 1, {})]


def test_an_id_taken_over_by_a_newer_connection_is_not_removed_with_the_old_one():
    room = RoomAwareness()
    room.apply("old", update((1, 1, {"v": 1})))
    room.apply("new", update((1, 2, {"v": 2})))  # the client reconnected
    assert room.announced("old") == frozenset() and room.announced("new") == {1}
    assert room.remove_connection("old") is None
    assert decoded(room.remove_connection("new")) == [(1, 2, None)]


def test_a_late_resend_after_removal_does_not_resurrect_the_client():
    room = RoomAwareness()
    room.apply("a", update((1, 3, {"v": 1})))
    room.remove_connection("a")
    assert room.apply("b", update((1, 3, {"v": 1}))) is None  # a peer's echo
    assert room.apply("b", update((1, 3, None))) is None  # and of the removal
    assert len(room) == 0 and room.announced("b") == frozenset()


def test_a_null_from_another_connection_removes_and_unannounces():
    room = RoomAwareness()
    room.apply("a", update((1, 3, {"v": 1})))
    assert decoded(room.apply("b", update((1, 3, None)))) == [(1, 3, None)]
    assert room.announced("a") == frozenset() and room.remove_connection("a") is None


def test_another_users_connection_cannot_replace_or_remove_a_state():
    room = RoomAwareness()
    room.apply("alice-tab", update((1, 3, {"name": "alice"})), user="alice")
    assert room.apply("bob-tab", update((1, 4, {"name": "not alice"})), user="bob") is None
    assert room.apply("bob-tab", update((1, 3, None)), user="bob") is None  # (his timeout)
    assert room.states() == {1: (3, json.dumps({"name": "alice"}))}
    assert room.announced("bob-tab") == frozenset()
    # the rest of the update still counts
    assert decoded(room.apply("bob-tab", update((1, 5, {}), (2, 1, {"name": "bob"})),
                              user="bob")) == [(2, 1, {"name": "bob"})]


def test_the_same_user_may_take_its_client_id_over():
    room = RoomAwareness()
    room.apply("old", update((1, 1, {"v": 1})), user="alice")
    assert decoded(room.apply("new", update((1, 2, {"v": 2})), user="alice")) == \
        [(1, 2, {"v": 2})]  # (the client reconnected)
    assert room.announced("new") == {1}
    room.remove_connection("new")
    # once gone, the id is nobody's: a later client with it is accepted
    assert room.apply("bob-tab", update((1, 3, {})), user="bob") is not None


def test_a_relay_says_whose_its_states_are():
    """Another node's relay names the user its states came from: a member here of
    another user cannot take them over; the relay itself is not checked (its node did)."""
    room = RoomAwareness()
    room.apply(("node", "b"), update((1, 1, {"v": 1})), user="bob", relayed=True)
    assert room.apply("tab", update((1, 2, {"v": 2})), user="carol") is None
    assert room.apply(("node", "c"), update((1, 2, {"v": 2})), user="carol",
                      relayed=True) is not None
    room.apply(("node", "d"), update((2, 1, {})), relayed=True)  # (an older node: no user)
    assert room.apply("tab", update((2, 2, {"v": 2})), user="carol") is not None


def test_announced_states_are_encoded_per_user():
    room = RoomAwareness()
    room.apply("a1", update((1, 1, {"a": 1})), user="alice")
    room.apply("a2", update((2, 1, {"a": 2})), user="alice")
    room.apply("b1", update((3, 1, {"b": 1})), user="bob")
    room.apply(("node", "x"), update((4, 1, {})), user="carol", relayed=True)
    announced = room.encode_announced(["a1", "a2", "b1"])
    assert {user: decoded(states) for user, states in announced.items()} == {
        "alice": [(1, 1, {"a": 1}), (2, 1, {"a": 2})], "bob": [(3, 1, {"b": 1})]}
    assert room.encode_announced(["nobody"]) == {}


def test_encode_all_is_empty_for_an_empty_room():
    assert decode_update(RoomAwareness().encode_all()) == []


# -- malformed input and bounds -------------------------------------------------------------

MALFORMED = [
    b"", b"\x01", b"\x01\x01", b"\x01\x01\x01", b"\x01\x01\x01\x05{}",  # truncated
    b"\x02" + var_uint(1) + var_uint(1) + var_string("{}"),  # claims two entries
    b"\x01" + b"\xff" * 9 + b"\x01\x01\x02{}",  # varuint beyond 2**53
    b"\x01\x01\x01" + var_uint(2**40) + b"{}",  # huge length prefix
    update((1, 1, {})) + b"\x00",  # trailing bytes
    b"\x01\x01\x01" + var_string("{not json"),
    b"\x01\x01\x01" + var_string(""),
    b"\x01\x01\x01" + var_string("NaN"),
    b"\x01\x01\x01" + var_string('{"a": Infinity}'),
    b"\x01\x01\x01\x02\xff\xfe",  # not UTF-8
    b"\x01\x01\x01" + var_string("[" * 100_000 + "]" * 100_000),  # deeply nested
    "not bytes",
]


@pytest.mark.parametrize("data", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_updates_are_invalid_input_and_change_nothing(data):
    room = RoomAwareness()
    room.apply("a", update((1, 1, {"keep": True})))
    before = (room.states(), room.announced("a"), room.encode_all())
    with pytest.raises(InvalidInput):
        room.apply("a", data)
    assert (room.states(), room.announced("a"), room.encode_all()) == before


def test_random_bytes_never_raise_anything_but_invalid_input():
    rng = random.Random(9)
    room = RoomAwareness()
    good = update((1, 1, {"a": [1, 2, {"b": "c"}]}), (2, 5, None))
    refused = 0
    for _ in range(3000):
        data = bytearray(good)
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        before = room.encode_all()
        try:
            room.apply("x", bytes(data))
        except (InvalidInput, PayloadTooLarge):
            refused += 1
            assert room.encode_all() == before
    assert refused > 2000
    assert len(room) <= MAX_IDS_PER_CONNECTION


def test_one_state_is_bounded_in_bytes():
    room = RoomAwareness()
    at_limit = "x" * (MAX_STATE_BYTES - 2)  # with its quotes: exactly the limit
    assert room.apply("a", update((1, 1, at_limit))) is not None
    with pytest.raises(PayloadTooLarge) as refused:
        room.apply("a", update((1, 2, at_limit + "y")))
    assert refused.value.details == {"limit": MAX_STATE_BYTES}
    assert room.states()[1][0] == 1


def test_ids_per_connection_are_bounded_and_a_refused_update_applies_nothing():
    room = RoomAwareness()
    full = [(cid, 1, {}) for cid in range(MAX_IDS_PER_CONNECTION)]
    assert room.apply("a", update(*full)) is not None
    before = room.encode_all()
    with pytest.raises(PayloadTooLarge):
        room.apply("a", update((0, 2, {"v": 2}), (100, 1, {})))  # one more id
    assert room.encode_all() == before
    # removing one makes room for another, within one update
    assert room.apply("a", update((0, 1, None), (100, 1, {}))) is not None
    assert len(room.announced("a")) == MAX_IDS_PER_CONNECTION


def test_states_per_room_are_bounded():
    room = RoomAwareness(max_states=3, max_ids_per_connection=2)
    room.apply("a", update((1, 1, {}), (2, 1, {})))
    room.apply("b", update((3, 1, {})))
    with pytest.raises(PayloadTooLarge):
        room.apply("c", update((4, 1, {})))
    room.remove_connection("b")
    assert room.apply("c", update((4, 1, {}))) is not None


def test_removed_clients_are_remembered_up_to_a_cap():
    room = RoomAwareness(max_removed=5)
    for cid in range(20):
        room.apply(cid, update((cid, 1, {})))
        room.remove_connection(cid)
    assert len(room._removed) == 5 and len(room) == 0
    # the most recent are still known: their old state is stale
    assert room.apply("late", update((19, 1, {}))) is None


# -- expiry (y-protocols' outdatedTimeout) ---------------------------------------------------

class Clock:
    """Time that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_state_not_renewed_within_the_timeout_expires():
    clock = Clock()
    room = RoomAwareness(timeout=30, clock=clock)
    room.apply("a", update((1, 4, {"me": "a"})))
    room.apply(("node", "n2"), update((2, 1, {"me": "b"})), relayed=True)
    clock.now += 20
    room.apply("a", update((1, 5, {"me": "a"})))  # a renews (y-protocols: every 15 s)
    clock.now += 9.9
    assert room.expire() is None and set(room.states()) == {1, 2}
    clock.now += 0.1  # 30 s since 2's state came, 10 s since 1's renewal
    assert set(room.states()) == {1}  # expired, before expire() has removed it
    assert decoded(room.encode_all()) == [(1, 5, {"me": "a"})]  # a newcomer never sees it
    assert decoded(room.expire()) == [(2, 1, None)]  # its clock, as remove_connection
    assert room.expire() is None and room.announced(("node", "n2")) == frozenset()
    # an echo of the expired state is stale; its client's next renewal is news again
    assert room.apply("a", update((2, 1, {"me": "b"}))) is None
    assert decoded(room.apply(("node", "n2"), update((2, 2, {"me": "b"})), relayed=True)) \
        == [(2, 2, {"me": "b"})]


def test_an_expired_state_removed_is_not_removed_again_with_its_connection():
    clock = Clock()
    room = RoomAwareness(timeout=30, clock=clock)
    room.apply("a", update((1, 1, {}), (2, 1, {})))
    clock.now += 20
    room.apply("a", update((2, 2, {})))
    clock.now += 10
    assert decoded(room.expire()) == [(1, 1, None)]
    assert decoded(room.remove_connection("a")) == [(2, 2, None)]
    assert len(room) == 0


def test_a_node_relays_more_states_than_one_connection_may_hold():
    """Another node's relay carries the states of all its connections: only the room's
    bound applies to it, so a newcomer here sees every cursor of a busy node."""
    room = RoomAwareness()
    many = [(cid, 1, {}) for cid in range(3 * MAX_IDS_PER_CONNECTION)]
    assert room.apply(("node", "n2"), update(*many), relayed=True) is not None
    assert len(decoded(room.encode_all())) == 3 * MAX_IDS_PER_CONNECTION
    with pytest.raises(PayloadTooLarge):  # a connection of this node still may not
        room.apply("a", update(*[(cid, 1, {}) for cid in range(100, 109)]))
