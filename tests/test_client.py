"""collab.client.SocketManager against real servers: in-process, and `collab serve`
in a subprocess that is killed with SIGKILL and restarted on the same port and data."""

from __future__ import annotations

import asyncio
import logging
import random
import subprocess
import sys
import time
from collections.abc import Callable
from itertools import pairwise
from typing import Any

import jwt
import pytest
from harness import WAIT, CollabProcess, Gate, Recorder, make_token, manager
from services import free_port

from collab.client import (
    TOKEN_PROVIDER_FAILED,
    AckTimeout,
    CollabError,
    SocketManager,
    TokenProviderError,
)
from collab.client.feed import ChatFeed
from collab.client.reconnect import Backoff

# -- helpers ---------------------------------------------------------------------------


async def post(url: str, user: str, chat_id: str, contents: list[str]) -> None:
    """Another user posts through a connection of their own."""
    async with manager(url, user, max_reconnect_attempts=0) as other:
        for content in contents:
            await other.emit("chat:message", {"chat_id": chat_id, "content": content})


async def chat_with(m: SocketManager, *members: str) -> str:
    chat = (await m.emit("chat:create", {"title": "t", "members": list(members)}))["chat"]
    await m.emit("chat:join", {"chat_id": chat["id"]})
    return chat["id"]


# -- acks and errors ---------------------------------------------------------------------


async def test_emit_returns_the_result_fields(server):
    async with manager(server.url) as m:
        result = await m.emit("documents:create", {"document_id": "d1", "content": "hi"})
    assert set(result) == {"document"}
    assert result["document"]["id"] == "d1" and result["document"]["version"] == 0


async def test_failure_acks_raise_collab_error_with_the_server_code(server):
    async with manager(server.url) as m:
        seen = Recorder(m, "error")
        await m.emit("documents:create", {"document_id": "d1", "content": "v0"})
        await m.emit("documents:join", {"document_id": "d1"})

        with pytest.raises(CollabError) as exists:
            await m.emit("documents:create", {"document_id": "d1"})
        assert exists.value.code == "ALREADY_EXISTS" and exists.value.message

        with pytest.raises(CollabError) as conflict:
            await m.emit("documents:update", {"document_id": "d1", "content": "x", "version": 5})
        assert conflict.value.code == "VERSION_CONFLICT"
        assert conflict.value.details["current_version"] == 0
        assert conflict.value.details["document"]["content"] == "v0"

        with pytest.raises(CollabError) as missing:
            await m.emit("chat:join", {"chat_id": "nope"})
        assert missing.value.code in ("NOT_FOUND", "PERMISSION_DENIED")

        with pytest.raises(CollabError) as unknown:
            await m.emit("no:such:event", {})
        assert unknown.value.code == "INVALID_INPUT"

        # the server's `error` event reached the `error` handlers, before each emit returned
        codes = [e["code"] for e in seen.seen["error"]]
        assert codes == ["ALREADY_EXISTS", "VERSION_CONFLICT", missing.value.code,
                         "INVALID_INPUT"]
        assert m.joined_chats == []  # a failed join is not re-joined later


async def test_a_missing_ack_raises_a_timeout_that_is_also_asyncio_timeout(server):
    async with manager(server.url) as m:
        with pytest.raises(asyncio.TimeoutError) as timeout:
            await m.emit("documents:create", {"document_id": "d1"}, timeout=0)
        assert isinstance(timeout.value, CollabError) and isinstance(timeout.value, AckTimeout)
        assert timeout.value.code == "TIMEOUT"
        # the late ack is dropped and the connection goes on
        with pytest.raises(CollabError) as exists:
            await m.emit("documents:create", {"document_id": "d1"})
        assert exists.value.code == "ALREADY_EXISTS"


async def test_refused_and_unreachable_connects_raise(server):
    with pytest.raises(CollabError) as refused:
        await manager(server.url, token=make_token("alice", key="x" * 40)).connect()
    assert refused.value.code == "UNAUTHORIZED" and "signature" in refused.value.message

    with pytest.raises(CollabError) as unreachable:
        await manager(f"http://127.0.0.1:{free_port()}").connect()
    assert unreachable.value.code == "CONNECTION_FAILED"


async def test_emit_when_not_connected_raises_disconnected(server):
    m = manager(server.url)
    with pytest.raises(CollabError) as before:
        await m.emit("documents:create", {})
    assert before.value.code == "DISCONNECTED"
    seen = Recorder(m, "connected", "disconnected")
    await m.connect()
    assert seen.seen["connected"] == [{"sid": m.sid, "reconnected": False}]
    await m.disconnect()
    assert seen.seen["disconnected"] == [{"reason": "client disconnect", "reconnecting": False}]
    with pytest.raises(CollabError) as after:
        await m.emit("documents:create", {})
    assert after.value.code == "DISCONNECTED"


async def test_sync_and_async_handlers_run_in_order_before_the_ack_returns(server):
    async with manager(server.url) as alice, manager(server.url, "bob") as bob:
        got_sync: list[int] = []
        got_async: list[int] = []
        alice.on("chat:message", lambda data: got_sync.append(data["message"]["seq"]))

        @alice.on("chat:message")
        async def slow(data: dict) -> None:
            await asyncio.sleep(0)  # yields: the next event must still wait for it
            got_async.append(data["message"]["seq"])

        chat_id = await chat_with(alice, "bob")
        await bob.emit("chat:join", {"chat_id": chat_id})
        for i in range(1, 6):
            result = await alice.emit("chat:message", {"chat_id": chat_id, "content": f"m{i}"})
            # the broadcast to the sender came before its ack: its handlers have run
            assert got_sync[-1] == got_async[-1] == result["message"]["seq"] == i
        await bob.emit("chat:message", {"chat_id": chat_id, "content": "from bob"})
        await alice.emit("chat:history", {"chat_id": chat_id})  # a round trip
        assert got_sync == got_async == [1, 2, 3, 4, 5, 6]


async def test_a_handler_may_emit(server):
    """A handler's emit settles directly, though the dispatcher is busy with the handler."""
    async with manager(server.url) as alice, manager(server.url, "bob") as bob:
        chat_id = await chat_with(alice, "bob")
        await bob.emit("chat:join", {"chat_id": chat_id})
        replies = Recorder(bob, "chat:message")
        echoed: asyncio.Future = asyncio.get_running_loop().create_future()

        @alice.on("chat:message")
        async def echo(data: dict) -> None:
            if data["message"]["user_id"] == "bob":
                result = await alice.emit("chat:message", {"chat_id": chat_id, "content": "echo"})
                echoed.set_result(result["message"]["seq"])

        await bob.emit("chat:message", {"chat_id": chat_id, "content": "ping"})
        assert await asyncio.wait_for(echoed, WAIT) == 2
        await replies.count("chat:message", 2)
        assert replies.contents() == ["ping", "echo"]


# -- reconnection and recovery (in-process server, disconnected by the server) -------------


async def test_reconnects_rejoins_and_delivers_what_was_missed_exactly_once(server):
    gate = Gate()
    alice = manager(server.url, token_provider=gate, reconnect_delay=0.01)
    seen = Recorder(alice, "chat:message", "documents:updated", "connected", "disconnected")
    await alice.connect()
    async with manager(server.url, "bob") as bob:
        chat_id = await chat_with(alice, "bob")
        left_id = await chat_with(alice, "bob")
        await alice.emit("chat:leave", {"chat_id": left_id})
        await alice.emit("documents:create", {"document_id": "d", "content": ""})
        await alice.emit("documents:share", {"document_id": "d", "user_id": "bob",
                                             "role": "editor"})
        await alice.emit("documents:join", {"document_id": "d"})
        await post(server.url, "bob", chat_id, ["before"])
        await seen.count("chat:message", 1)

        gate.open.clear()
        gate.asked.clear()
        await server.app.sio.disconnect(alice.sid)  # the server drops alice
        assert (await seen.count("disconnected", 1))[0]["reconnecting"] is True
        await asyncio.wait_for(gate.asked.wait(), WAIT)  # reconnecting, held at the token

        await post(server.url, "bob", chat_id, ["missed 1", "missed 2"])
        await post(server.url, "bob", left_id, ["not for alice"])
        await bob.emit("documents:join", {"document_id": "d"})
        await bob.emit("documents:update", {"document_id": "d", "content": "a", "version": 1})
        await bob.emit("documents:update", {"document_id": "d", "content": "ab", "version": 2})

        gate.open.set()
        connected = await seen.count("connected", 2)
        assert connected[1] == {"sid": alice.sid, "reconnected": True}
        # recovery ran before `connected`: the missed ones are there, in order, once
        assert seen.contents() == ["before", "missed 1", "missed 2"]
        assert [d.get("recovered", False) for d in seen.seen["chat:message"]] == [
            False, True, True]
        [update] = seen.seen["documents:updated"]  # one: the current document, not each step
        assert (update["document"]["version"], update["document"]["content"]) == (2, "ab")
        assert update["user_id"] is None and update["recovered"] is True
        assert sorted(alice.joined_chats) == [chat_id] and alice.joined_documents == ["d"]

        # live again: broadcasts flow, the version is tracked on
        await bob.emit("documents:update", {"document_id": "d", "content": "abc", "version": 3})
        await post(server.url, "bob", chat_id, ["after"])
        await seen.count("chat:message", 4)
        await seen.count("documents:updated", 2)
        assert seen.seen["documents:updated"][1]["user_id"] == "bob"
    await alice.disconnect()
    assert seen.contents() == ["before", "missed 1", "missed 2", "after"]
    assert seen.seqs() == [1, 2, 3, 4]
    assert gate.calls == 2  # the first token, then one at the start of the reconnection


async def test_recovery_of_more_than_a_page_of_bytes_delivers_each_message_once(server):
    """50 messages at the character limit (10,000 emoji, 2 MB in all) missed while
    away: the rejoin's pages are bounded by bytes, and the client gets every one."""
    gate = Gate()
    alice = manager(server.url, token_provider=gate, reconnect_delay=0.01)
    seen = Recorder(alice, "chat:message", "connected")
    await alice.connect()
    chat_id = await chat_with(alice, "bob")
    gate.open.clear()
    await server.app.sio.disconnect(alice.sid)
    await asyncio.wait_for(gate.asked.wait(), WAIT)
    missed = [f"{i:02d}" + "\U0001F600" * 9998 for i in range(50)]
    await post(server.url, "bob", chat_id, missed)
    gate.open.set()
    await seen.count("connected", 2)
    await seen.count("chat:message", 50)
    assert seen.contents() == missed
    assert seen.seqs() == list(range(1, 51))
    assert all(d["recovered"] is True for d in seen.seen["chat:message"])
    await alice.disconnect()


async def test_a_room_closed_to_the_user_meanwhile_is_forgotten(server):
    gate = Gate()
    alice = manager(server.url, token_provider=gate, reconnect_delay=0.01)
    seen = Recorder(alice, "error", "connected")
    await alice.connect()
    async with manager(server.url, "bob") as bob:
        await bob.emit("documents:create", {"document_id": "kept"})
        await bob.emit("documents:create", {"document_id": "revoked"})
        for document_id in ("kept", "revoked"):
            await bob.emit("documents:share", {"document_id": document_id, "user_id": "alice",
                                               "role": "viewer"})
            await alice.emit("documents:join", {"document_id": document_id})

        gate.open.clear()
        await server.app.sio.disconnect(alice.sid)
        await asyncio.wait_for(gate.asked.wait(), WAIT)
        await bob.emit("documents:share", {"document_id": "revoked", "user_id": "alice",
                                           "role": None})
        gate.open.set()
        await seen.count("connected", 2)
    assert alice.joined_documents == ["kept"]
    assert [e["code"] for e in seen.seen["error"]] in (["PERMISSION_DENIED"], ["NOT_FOUND"])
    await alice.disconnect()


async def test_a_refused_reconnect_asks_the_token_provider_again(server):
    tokens = iter([make_token("alice"), make_token("alice", ttl=-10), make_token("alice")])
    calls: list[str] = []

    def provider() -> str:  # a plain function works too
        calls.append("called")
        return next(tokens)

    alice = manager(server.url, token_provider=provider, reconnect_delay=0.01)
    seen = Recorder(alice, "connected", "error")
    await alice.connect()
    await server.app.sio.disconnect(alice.sid)
    await seen.count("connected", 2)
    assert len(calls) == 3  # first token; the expired one, refused; a fresh one
    assert seen.seen["error"] == []
    await alice.emit("documents:create", {})
    await alice.disconnect()


async def test_token_refresh_keeps_the_connection_past_the_first_expiry(server):
    minted: asyncio.Queue[str] = asyncio.Queue()

    def provider() -> str:  # tokens that live 2 to 3 seconds (exp is whole seconds)
        token = make_token("alice", ttl=3)
        minted.put_nowait(token)
        return token

    alice = manager(server.url, token_provider=provider)
    seen = Recorder(alice, "connected", "disconnected", "error")
    await alice.connect()
    sid = alice.sid
    first_expiry = jwt.decode(minted.get_nowait(), options={"verify_signature": False})["exp"]
    # a refresh comes at 80% of each token's remaining life; wait for them past the first expiry
    while time.time() < first_expiry + 0.5:
        await asyncio.wait_for(minted.get(), WAIT)
    result = await alice.emit("documents:create", {})
    assert result["document"]["created_by"] == "alice"
    assert alice.sid == sid  # the same connection, never dropped
    assert len(seen.seen["connected"]) == 1
    assert seen.seen["disconnected"] == [] and seen.seen["error"] == []
    await alice.disconnect()


# -- token forms: a string, or a provider asked at every (re)connect -----------------------------


class Minter:
    """Tokens numbered 1, 2, ...: each with its own ``name`` claim and ``exp``, so the
    server's identity of a connection tells which token it was opened with."""

    def __init__(self, user: str = "alice") -> None:
        self.user = user
        self.minted: list[str] = []

    def __call__(self) -> str:
        n = len(self.minted) + 1
        self.minted.append(make_token(self.user, ttl=3600 * n, name=f"token {n}"))
        return self.minted[-1]

    def exp(self, n: int) -> float:
        return float(jwt.decode(self.minted[n - 1], options={"verify_signature": False})["exp"])


def as_sync(minter: Minter) -> Callable[[], str]:
    return lambda: minter()


def as_async(minter: Minter) -> Callable[[], Any]:
    async def provider() -> str:
        await asyncio.sleep(0)
        return minter()

    return provider


class AsAwaitableObject:
    """An object whose ``__call__`` is async: not a coroutine function to ``inspect``."""

    def __init__(self, minter: Minter) -> None:
        self.minter = minter

    async def __call__(self) -> str:
        return self.minter()


def identity(server: Any, sid: str | None) -> tuple[str, str, float]:
    """Who the server thinks the connection ``sid`` is, and until when."""
    who = server.app.connections[sid].identity
    return who.user_id, who.name, who.expires_at


@pytest.mark.parametrize("form", [as_sync, as_async, AsAwaitableObject])
async def test_a_callable_token_is_asked_at_connect_and_again_at_the_reconnect(server, form):
    minter = Minter()
    alice = manager(server.url, token=form(minter), reconnect_delay=0.01)
    seen = Recorder(alice, "connected", "error")
    await alice.connect()
    assert identity(server, alice.sid) == ("alice", "token 1", minter.exp(1))

    await server.app.sio.disconnect(alice.sid)
    await seen.count("connected", 2)
    # the reconnect presented a new token, not the one it first connected with
    assert identity(server, alice.sid) == ("alice", "token 2", minter.exp(2))
    assert len(minter.minted) == 2 and seen.seen["error"] == []
    await alice.disconnect()


async def test_a_string_token_and_a_provider_connect_with_the_string_first(server):
    minter = Minter()
    given = make_token("alice", name="given")
    alice = manager(server.url, token=given, token_provider=minter, reconnect_delay=0.01)
    seen = Recorder(alice, "connected")
    await alice.connect()
    assert identity(server, alice.sid)[1] == "given" and minter.minted == []
    await server.app.sio.disconnect(alice.sid)
    await seen.count("connected", 2)
    assert identity(server, alice.sid)[1] == "token 1"
    await alice.disconnect()


async def test_a_token_that_is_neither_a_string_nor_callable_is_refused_at_once():
    with pytest.raises(TypeError, match="token must be a str or a callable"):
        SocketManager("http://127.0.0.1:1", token=b"bytes")
    with pytest.raises(TypeError, match="not both"):
        SocketManager("http://127.0.0.1:1", token=Minter(), token_provider=Minter())


class Broken(Exception):
    pass


@pytest.mark.parametrize("returns, says", [
    (Broken("secret-abc123 in the text"), "token provider raised Broken"),
    ({"token": "secret-abc123"}, "token provider returned dict, not a str"),
    ("", "token provider returned an empty string"),
])
async def test_a_failing_provider_fails_connect_clearly_and_once(server, caplog, returns, says):
    caplog.set_level(logging.DEBUG)  # so that a secret logged at any level shows
    calls: list[int] = []

    async def provider() -> Any:
        calls.append(1)
        if isinstance(returns, Exception):
            raise returns
        return returns

    alice = manager(server.url, token=provider, reconnect_delay=0.01)
    with pytest.raises(TokenProviderError) as failed:
        await alice.connect()
    assert failed.value.code == TOKEN_PROVIDER_FAILED and failed.value.message == says
    assert isinstance(failed.value, CollabError)
    if isinstance(returns, Exception):
        assert failed.value.__cause__ is returns  # for the caller; not in the message
    assert calls == [1] and server.app.connections == {}  # asked once, never connected
    with pytest.raises(CollabError) as closed:
        await alice.emit("documents:create", {})
    assert closed.value.code == "DISCONNECTED"
    assert "secret-abc123" not in caplog.text


async def test_a_provider_failing_at_reconnect_is_reported_once_per_attempt(server, caplog):
    caplog.set_level(logging.DEBUG)  # so that a secret logged at any level shows
    minter = Minter()
    failures = 0

    def provider() -> str:
        nonlocal failures
        if minter.minted:  # the first call works; every later one raises
            failures += 1
            raise Broken("secret-abc123")
        return minter()

    alice = manager(server.url, token=provider, reconnect_delay=0.01,
                    reconnect_delay_max=0.02, max_reconnect_attempts=3)
    seen = Recorder(alice, "error", "disconnected")
    await alice.connect()
    await server.app.sio.disconnect(alice.sid)
    errors = await seen.count("error", 4)
    assert errors == [{"code": TOKEN_PROVIDER_FAILED,
                       "message": "token provider raised Broken",
                       "details": {"exception": "Broken"}}] * 3 + [
        {"code": "MAX_RECONNECT_EXCEEDED", "message": "Could not reconnect after 3 attempts"}]
    assert failures == 3  # once per attempt, each after its backoff: no retry storm
    assert [d["reconnecting"] for d in seen.seen["disconnected"]] == [True, False]
    assert server.app.connections == {}
    assert "secret-abc123" not in caplog.text
    await alice.disconnect()


async def test_the_refresh_asks_the_provider_and_reports_its_failure(server, caplog):
    caplog.set_level(logging.DEBUG)  # so that a secret logged at any level shows
    minter = Minter()
    refreshed = asyncio.Event()

    async def provider() -> str:
        if minter.minted:
            refreshed.set()
            raise Broken("secret-abc123")
        minter.minted.append(make_token("alice", ttl=2))  # refreshed 0.8 to 1.6 s from now
        return minter.minted[-1]

    alice = manager(server.url, token=provider)
    seen = Recorder(alice, "error", "disconnected")
    await alice.connect()
    sid = alice.sid
    await asyncio.wait_for(refreshed.wait(), WAIT)
    [error] = await seen.count("error", 1)
    assert error["code"] == TOKEN_PROVIDER_FAILED
    # the connection is untouched until the token runs out; the provider was asked twice
    assert alice.sid == sid and seen.seen["disconnected"] == [] and len(minter.minted) == 1
    assert "secret-abc123" not in caplog.text
    await alice.disconnect()


# -- a real `collab serve`, killed with SIGKILL ------------------------------------------------


@pytest.fixture
def collab_process(tmp_path):
    proc = CollabProcess(tmp_path, history_limit=2, history_max=3)
    proc.start()
    yield proc
    proc.stop()


async def test_sigkill_and_restart_lose_no_message_and_repeat_none(collab_process):
    """Messages posted before the kill, to the restarted server while alice is still away,
    while she re-joins, and after: her chat:message handlers get each once, in order.
    The server's history page is 3, so the recovery has to page through the gap."""
    url = collab_process.url
    gate = Gate()
    alice = manager(url, token_provider=gate, reconnect_delay=0.05, reconnect_delay_max=0.2,
                    max_reconnect_attempts=50)
    seen = Recorder(alice, "chat:message", "documents:updated", "connected", "disconnected")
    await alice.connect()
    chat_id = await chat_with(alice, "bob")
    await alice.emit("documents:create", {"document_id": "d", "content": ""})
    await alice.emit("documents:share", {"document_id": "d", "user_id": "bob", "role": "editor"})
    await alice.emit("documents:join", {"document_id": "d"})
    before = [f"before {i}" for i in range(3)]
    await post(url, "bob", chat_id, before)
    await seen.count("chat:message", 3)

    gate.open.clear()
    gate.asked.clear()
    collab_process.kill()
    await seen.count("disconnected", 1)
    await asyncio.to_thread(collab_process.start)  # same port, same SQLite file
    await asyncio.wait_for(gate.asked.wait(), WAIT)  # alice waits at her next token

    during = [f"during {i}" for i in range(7)]
    await post(url, "bob", chat_id, during)
    async with manager(url, "bob") as bob:
        await bob.emit("documents:join", {"document_id": "d"})
        await bob.emit("documents:update", {"document_id": "d", "content": "x", "version": 1})

    racing = [f"racing {i}" for i in range(5)]
    race = asyncio.ensure_future(post(url, "bob", chat_id, racing))  # live while re-joining
    gate.open.set()
    await seen.count("connected", 2)
    await race
    after = [f"after {i}" for i in range(3)]
    await post(url, "bob", chat_id, after)

    expected = before + during + racing + after
    await seen.count("chat:message", len(expected))
    history = await alice.emit("chat:history", {"chat_id": chat_id})  # a round trip
    assert history["messages"][-1]["content"] == after[-1]
    await alice.disconnect()

    assert seen.contents() == expected
    assert seen.seqs() == list(range(1, len(expected) + 1))
    recovered = [d["message"]["content"] for d in seen.seen["chat:message"] if d.get("recovered")]
    assert set(during) <= set(recovered)  # these only came back through the recovery
    updates = seen.seen["documents:updated"]
    assert [(u["document"]["version"], u["user_id"]) for u in updates] == [(1, None)]


async def test_a_server_gone_for_good_ends_in_max_reconnect_exceeded(collab_process):
    alice = manager(collab_process.url, max_reconnect_attempts=3, reconnect_delay=0.05,
                    reconnect_delay_max=0.1)
    seen = Recorder(alice, "error", "disconnected")
    await alice.connect()
    start = time.monotonic()
    collab_process.kill()
    errors = await seen.count("error", 1)
    assert time.monotonic() - start >= 0.05 + 0.1 + 0.1  # 3 attempts, delays growing, capped
    assert errors == [{"code": "MAX_RECONNECT_EXCEEDED",
                       "message": "Could not reconnect after 3 attempts"}]
    assert [d["reconnecting"] for d in seen.seen["disconnected"]] == [True, False]
    assert not alice.connected
    with pytest.raises(CollabError) as closed:
        await alice.emit("documents:create", {})
    assert closed.value.code == "DISCONNECTED"
    await alice.disconnect()  # a no-op now


async def test_after_a_restart_the_attempts_follow_the_backoff_and_reconnect(collab_process):
    """Kill the server and let four attempts fail: each asks the token provider after
    its delay, so the gaps between the calls are the delays, within their bounds
    (growing by the factor, jittered, capped). Then restart it: the next attempt gets in,
    with a new token."""
    loop = asyncio.get_running_loop()
    backoff = Backoff(initial=0.05, factor=3.0, cap=0.5)
    asked: list[float] = []
    four_failed = asyncio.Event()
    minter = Minter()

    def provider() -> str:
        asked.append(loop.time())
        if len(asked) == 1 + 4:
            four_failed.set()
        return minter()

    alice = manager(collab_process.url, token=provider, reconnect_delay=backoff.initial,
                    reconnect_factor=backoff.factor, reconnect_delay_max=backoff.cap,
                    max_reconnect_attempts=100)
    seen = Recorder(alice, "connected")
    lost: list[float] = []
    alice.on("disconnected", lambda data: lost.append(loop.time()))
    await alice.connect()

    collab_process.kill()
    await asyncio.wait_for(four_failed.wait(), WAIT)
    await asyncio.to_thread(collab_process.start)  # same port, same SQLite file
    await seen.count("connected", 2)
    result = await alice.emit("documents:create", {})
    assert result["document"]["created_by"] == "alice"
    await alice.disconnect()

    starts = [lost[0], *asked[1:5]]  # the loss, then the first four attempts
    # bounds 0.05-0.15, 0.15-0.45, 0.45-0.5, 0.5 (the cap); the old linear delays
    # (0.05 * n) would be too short from the second attempt on
    for attempt, (before, at) in enumerate(pairwise(starts), start=1):
        low, high = backoff.bounds(attempt)
        # a refused connect to a dead port takes milliseconds; allow for a busy machine
        assert low - 0.01 <= at - before <= high + 0.15, (attempt, at - before)
    assert len(minter.minted) == len(asked) >= 6  # a fresh token for every attempt


# -- ChatFeed: the ordering rules on their own --------------------------------------------------


def msg(seq: int) -> dict[str, Any]:
    return {"seq": seq, "chat_id": "c", "content": str(seq)}


def delivered(out: list) -> list[int]:
    return [message["seq"] for message, _ in out]


def test_feed_delivers_in_order_once_and_reports_gaps():
    feed = ChatFeed()
    assert delivered(feed.offer([msg(3)], recovered=False)) == []  # joining: held
    feed.start(2)  # the join's page ended at 2
    assert delivered(feed.offer([], recovered=False)) == [3]
    assert delivered(feed.offer([msg(6), msg(5)], recovered=False)) == []
    assert feed.gap() == (5, 1)  # fetch seq 4: chat:history before_seq=5 limit=1
    assert delivered(feed.offer([msg(4), msg(5)], recovered=True)) == [4, 5, 6]
    assert delivered(feed.offer([msg(5), msg(6), msg(7)], recovered=True)) == [7]
    assert feed.gap() is None and feed.last == 7


# -- Backoff: the delays between reconnection attempts, computed on their own -----------------


def test_backoff_grows_by_the_factor_jitters_within_one_step_and_stops_at_the_cap():
    backoff = Backoff(initial=0.5, factor=2.0, cap=5.0, rng=random.Random(12))
    assert [backoff.bounds(n) for n in range(1, 7)] == [
        (0.5, 1.0), (1.0, 2.0), (2.0, 4.0), (4.0, 5.0), (5.0, 5.0), (5.0, 5.0)]
    for attempt in range(1, 7):
        low, high = backoff.bounds(attempt)
        delays = [backoff.delay(attempt) for _ in range(500)]
        assert all(low <= d <= high <= 5.0 for d in delays)
        if low < high:  # spread over the whole step, not bunched at one end
            assert min(delays) < low + 0.05 * (high - low)
            assert max(delays) > high - 0.05 * (high - low)
            assert len(set(delays)) == len(delays)
    # the same seed, the same delays: the rng is the only source of randomness
    runs = [Backoff(0.5, 2.0, 5.0, rng=random.Random(99)) for _ in range(2)]
    assert [runs[0].delay(n) for n in range(1, 20)] == [runs[1].delay(n) for n in range(1, 20)]


def test_backoff_edges():
    assert Backoff(1.0, 2.0, 30.0).bounds(5000) == (30.0, 30.0)  # no OverflowError
    assert Backoff(0.0, 2.0, 1.0).bounds(3) == (0.0, 0.0)
    assert Backoff(0.2, 1.0, 9.0).bounds(7) == (0.2, 0.2)  # factor 1: constant, no jitter
    assert Backoff(2.0, 2.0, 1.0).bounds(1) == (1.0, 1.0)  # a cap below the first step wins
    for bad in ({"initial": -1.0}, {"factor": 0.5}, {"cap": -0.1},
                {"initial": float("nan")}):
        with pytest.raises(ValueError):
            Backoff(**bad)


def test_the_manager_takes_the_backoff_settings():
    m = SocketManager("http://127.0.0.1:1", reconnect_delay=0.25, reconnect_factor=3.0,
                      reconnect_delay_max=2.0)
    assert (m.reconnect_delay, m.reconnect_factor, m.reconnect_delay_max) == (0.25, 3.0, 2.0)
    assert SocketManager("http://127.0.0.1:1").reconnect_factor == 2.0
    with pytest.raises(ValueError, match="reconnect_factor"):
        SocketManager("http://127.0.0.1:1", reconnect_factor=0.5)


# -- without the client extra ---------------------------------------------------------------


def test_without_aiohttp_the_import_names_the_extra_to_install():
    # ``sys.modules["aiohttp"] = None`` makes every ``import aiohttp`` fail, as on a machine
    # where only the server was installed
    code = "import sys; sys.modules['aiohttp'] = None; import collab.client"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: collab.client needs aiohttp"), result.stderr
    assert 'pip install "collab-server[client]"' in last
