"""Per-user limits across a user's connections on one node: a cap on connections at the
handshake, and one event rate shared by all of them (collab/userlimits.py)."""

from __future__ import annotations

import asyncio

import pytest
from harness import make_settings, make_token, settled

NOT_FOUND_EVENT = ("chat:typing", {"chat_id": "nope", "typing": True})


@pytest.fixture
def settings(request: pytest.FixtureRequest):
    return make_settings(**getattr(request, "param", {"max_connections_per_user": 3}))


async def test_connection_over_the_cap_is_refused_with_rate_limited(server):
    alice = [await server.connect("alice") for _ in range(3)]
    for _ in range(5):
        error = await server.refused(auth={"token": make_token("alice")})
        assert error is not None, "no connect_error reached the client"
        assert error["data"]["code"] == "RATE_LIMITED"
        assert error["data"]["message"] == error["message"] and "connections" in error["message"]
        assert error["data"]["details"]["limit"] == 3
        assert error["data"]["details"]["retry_after_ms"] > 0
    # the refused handshakes left nothing; alice's three are all there is (each sid is
    # in python-socketio's table of sids and in a room of its own)
    assert await settled(server.app, like=ALICE_X3) == ALICE_X3
    assert server.app.user_limits.connections("alice") == 3
    for client in alice:
        await client.ok("chat:create", {})
    await server.connect("bob")  # the cap is per user
    await alice[0].disconnect()
    await server.connect("alice")  # a slot is free again


ALICE_X3 = {"connections": 3, "users": 1, "registry": 3, "sio rooms": 6, "sio environ": 3,
            "eio sockets": 3}


async def test_concurrent_handshakes_cannot_pass_the_cap_together(server):
    async def attempt():
        try:
            return await server.connect("alice")
        except Exception:  # noqa: BLE001 - refused; counted below
            return None

    results = await asyncio.gather(*(attempt() for _ in range(12)))
    accepted = [client for client in results if client is not None]
    assert len(accepted) == 3
    assert len(server.app.connections) == 3


@pytest.mark.parametrize("settings", [{}], indirect=True, ids=["defaults"])
async def test_default_cap_is_100_connections_per_user(server):
    for _ in range(100):
        await server.connect("alice")
    error = await server.refused(auth={"token": make_token("alice")})
    assert error["data"]["code"] == "RATE_LIMITED"
    assert error["data"]["details"]["limit"] == 100


USER_RATE = {"user_rate_limit_per_second": 2, "user_rate_limit_burst": 10}


@pytest.mark.parametrize("settings", [USER_RATE], indirect=True, ids=["user-rate-2-burst-10"])
async def test_user_rate_is_shared_by_all_of_the_users_connections(server):
    first = await server.connect("alice")
    second = await server.connect("alice")
    bob = await server.connect("bob")
    acks = await asyncio.gather(*(first.call(*NOT_FOUND_EVENT) for _ in range(6)),
                                *(second.call(*NOT_FOUND_EVENT) for _ in range(4)))
    assert [a["error"]["code"] for a in acks] == ["NOT_FOUND"] * 10  # within the user's burst
    assert len(first.pending("error")) == 6 and len(second.pending("error")) == 4
    # each connection is far below its own limit (50/s, bursts of 100); the user is not
    for client in (first, second):
        error = await client.fails(*NOT_FOUND_EVENT, "RATE_LIMITED")
        assert "user" in error["message"]
        retry = error["details"]["retry_after_ms"]
        assert 0 < retry <= 1000  # at 2 events/s a token is back within 500 ms
    await bob.fails(*NOT_FOUND_EVENT, "NOT_FOUND")  # other users are not affected
    await asyncio.sleep(retry / 1000)  # the limit itself is about time
    await second.fails(*NOT_FOUND_EVENT, "NOT_FOUND")


@pytest.mark.parametrize("settings", [USER_RATE], indirect=True, ids=["user-rate-2-burst-10"])
async def test_user_rate_limited_event_changes_nothing(server):
    first = await server.connect("alice")
    second = await server.connect("alice")
    await first.ok("chat:create", {"chat_id": "c"})
    await asyncio.gather(*(second.call(*NOT_FOUND_EVENT) for _ in range(9)))
    second.pending("error")
    await first.fails("chat:message", {"chat_id": "c", "content": "lost?"}, "RATE_LIMITED")
    assert (await server.app.store.messages_after("c", 0, 10)) == []


async def test_per_user_state_goes_with_the_users_last_connection(server):
    first = await server.connect("alice")
    second = await server.connect("alice")
    assert len(server.app.user_limits) == 1
    await first.disconnect()
    assert len(server.app.user_limits) == 1
    await second.disconnect()
    # many distinct users over time: nothing grows
    for n in range(50):
        client = await server.connect(f"user-{n}")
        await client.disconnect()
    assert await settled(server.app) == {}
