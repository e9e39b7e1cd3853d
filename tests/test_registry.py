"""The registry contract, the same for MemoryRegistry and RedisRegistry; then what only
Redis does: presence across nodes, dead nodes purged, state rebuilt after a restart.
Every Redis test runs on a single Redis and on a 3-master Redis Cluster."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from harness import unique
from redis.crc import key_slot
from services import RedisClusterServer, RedisServer

from collab.errors import Unavailable
from collab.redisconn import SOCKET_TIMEOUT, RedisTarget, open_client
from collab.registry import open_registry
from collab.registry import redis as redis_registry
from collab.registry.redis import RedisRegistry

#: the session fixture giving the URL of each Redis backend
REDIS_URLS = {"redis": "redis_url", "cluster": "redis_cluster_url"}


@pytest.fixture(params=["memory", *REDIS_URLS])
def registry(request, io_loop):
    url = ("memory://" if request.param == "memory"
           else request.getfixturevalue(REDIS_URLS[request.param]))
    reg = open_registry(url, unique("node"))
    io_loop.run_sync(reg.open)
    yield reg
    io_loop.run_sync(reg.close)


class Presence:
    """Collects what a registry announces through ``on_presence``."""

    def __init__(self, registry, rooms: set[str] | None = None) -> None:
        self.events: asyncio.Queue = asyncio.Queue()
        self.rooms = rooms  # only these (other tests' nodes share the session Redis)
        registry.on_presence = self._record

    async def _record(self, event, room, user_id, skip):
        if self.rooms is None or room in self.rooms:
            self.events.put_nowait((event, room, user_id, skip))

    async def next(self, timeout: float = 10.0):
        return await asyncio.wait_for(self.events.get(), timeout)


# -- the contract ---------------------------------------------------------------


async def test_join_is_first_only_for_the_users_first_connection(registry):
    room = unique("chat")
    await registry.add_connection("a1", "alice")
    await registry.add_connection("a2", "alice")
    await registry.add_connection("b1", "bob")
    assert await registry.join("a1", room) is True
    assert await registry.join("a2", room) is False
    assert await registry.join("a1", room) is False  # joining again changes nothing
    assert await registry.join("b1", room) is True
    assert await registry.room_users(room) == ["alice", "bob"]


async def test_leave_is_last_only_when_no_connection_of_the_user_remains(registry):
    room = unique("document")
    for sid in ("a1", "a2"):
        await registry.add_connection(sid, "alice")
        await registry.join(sid, room)
    assert await registry.leave("a1", room) is False
    assert await registry.room_users(room) == ["alice"]
    assert await registry.leave("a1", room) is False  # not in the room any more
    assert await registry.leave("a2", room) is True
    assert await registry.room_users(room) == []


async def test_leave_of_a_room_never_joined_changes_nothing(registry):
    room = unique("chat")
    await registry.add_connection("a1", "alice")
    await registry.add_connection("b1", "bob")
    await registry.join("b1", room)
    assert await registry.leave("a1", room) is False
    assert await registry.room_users(room) == ["bob"]


async def test_remove_connection_returns_the_rooms_its_user_left(registry):
    only, shared = unique("chat"), unique("document")
    await registry.add_connection("a1", "alice")
    await registry.add_connection("a2", "alice")
    await registry.add_connection("b1", "bob")
    await registry.join("a1", only)
    await registry.join("a1", shared)
    await registry.join("a2", shared)
    await registry.join("b1", only)
    assert await registry.remove_connection("a1") == [(only, "alice")]
    assert await registry.room_users(only) == ["bob"]
    assert await registry.room_users(shared) == ["alice"]
    assert await registry.remove_connection("a1") == []  # already gone
    assert sorted(await registry.remove_connection("a2")) == [(shared, "alice")]
    assert await registry.room_users(shared) == []


async def test_room_users_are_distinct_and_sorted(registry):
    room = unique("chat")
    for sid, user in [("c1", "carol"), ("a1", "alice"), ("c2", "carol"), ("b1", "bob")]:
        await registry.add_connection(sid, user)
        await registry.join(sid, room)
    assert await registry.room_users(room) == ["alice", "bob", "carol"]
    assert await registry.room_users(unique("chat")) == []


async def test_join_of_a_removed_connection_changes_nothing(registry):
    room = unique("chat")
    await registry.add_connection("a1", "alice")
    await registry.remove_connection("a1")
    assert await registry.join("a1", room) is False
    assert await registry.room_users(room) == []


async def test_ping_answers(registry):
    await registry.ping()


# -- Redis: several nodes -------------------------------------------------------


@pytest.fixture(params=list(REDIS_URLS))
def shared_redis_url(request) -> str:
    """The session's single Redis, then the session's Redis Cluster."""
    return request.getfixturevalue(REDIS_URLS[request.param])


@pytest.fixture
def nodes(io_loop, shared_redis_url):
    """``await nodes(...)`` opens a RedisRegistry on the session Redis (single or cluster);
    all closed at the end."""
    opened: list[RedisRegistry] = []

    async def make(node_id: str | None = None, **kwargs) -> RedisRegistry:
        reg = RedisRegistry(shared_redis_url, node_id or unique("node"), **kwargs)
        await reg.open()
        opened.append(reg)
        return reg

    yield make
    for reg in opened:
        io_loop.run_sync(reg.close)


async def test_a_user_with_tabs_on_two_nodes_stays_until_both_leave(nodes):
    one, two = await nodes(), await nodes()
    room = unique("chat")
    await one.add_connection("t1", "alice")
    await two.add_connection("t2", "alice")
    await two.add_connection("b", "bob")
    assert await one.join("t1", room) is True
    assert await two.join("t2", room) is False
    assert await two.join("b", room) is True
    assert await one.room_users(room) == await two.room_users(room) == ["alice", "bob"]
    assert await one.remove_connection("t1") == []
    assert await two.room_users(room) == ["alice", "bob"]
    assert await two.leave("t2", room) is True
    assert await one.room_users(room) == ["bob"]


async def test_a_connection_removed_while_it_joins_is_in_no_room_and_never_joined(nodes):
    reg = await nodes()
    room = unique("chat")
    await reg.add_connection("a1", "alice")
    # the removal starts while the join's script is on its way to Redis
    joined, _ = await asyncio.gather(reg.join("a1", room), reg.remove_connection("a1"))
    assert joined is False  # so the app announces no user:joined for a closed connection
    assert await reg.room_users(room) == []
    assert [item for item in reg._backlog if item[1] == room] == []  # nor a user:left later


async def test_a_node_that_stops_beating_is_purged_once(nodes):
    # ``dead`` beats once at open and never again: it looks like a kill -9
    dead = await nodes(heartbeat_ttl=0.5, heartbeat_interval=3600)
    survivors = [await nodes(heartbeat_interval=0.1), await nodes(heartbeat_interval=0.1)]
    alone, shared = unique("chat"), unique("document")
    seen = [Presence(s, {alone, shared}) for s in survivors]
    await dead.add_connection("d1", "dora")
    await dead.add_connection("d2", "erin")
    await dead.join("d1", alone)
    await dead.join("d2", shared)
    await survivors[0].add_connection("e1", "erin")
    await survivors[0].join("e1", shared)

    [first] = await asyncio.wait_for(_either(seen), 10)  # one survivor, not both at once
    assert first == ("user:left", alone, "dora", [])
    assert await survivors[1].room_users(alone) == []
    assert await survivors[1].room_users(shared) == ["erin"]  # still there on a live node
    # the other survivor swept too, but the departure was reported once
    await asyncio.sleep(0.5)  # several sweeps of both survivors: nothing more may come
    assert all(s.events.empty() for s in seen)


async def _either(seen: list[Presence]) -> list:
    """What the first reporters announced: every one that reported in the same instant."""
    tasks = [asyncio.ensure_future(s.events.get()) for s in seen]
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    return [task.result() for task in done]


async def test_a_live_node_that_was_purged_comes_back_and_says_so(nodes):
    # its heartbeat lapses between beats: survivors purge it, then it finds out
    late = await nodes(heartbeat_ttl=0.5, heartbeat_interval=1.5)
    survivor = await nodes(heartbeat_interval=0.05)
    room = unique("chat")
    came_back, left = Presence(late, {room}), Presence(survivor, {room})
    await late.add_connection("l1", "lena")
    await late.join("l1", room)
    await survivor.add_connection("s1", "sam")
    await survivor.join("s1", room)

    assert await left.next() == ("user:left", room, "lena", [])
    assert await survivor.room_users(room) == ["sam"]
    assert await came_back.next() == ("user:joined", room, "lena", ["l1"])
    assert await survivor.room_users(room) == ["lena", "sam"]


async def test_restarting_under_the_same_node_id_clears_the_previous_life(
        nodes, shared_redis_url):
    room = unique("chat")
    node_id = unique("node")
    # the previous life never beats again nor says goodbye, like a kill -9
    old = await nodes(node_id=node_id, heartbeat_interval=3600)
    await old.add_connection("o1", "olga")
    await old.join("o1", room)
    watcher = await nodes()
    assert await watcher.room_users(room) == ["olga"]

    reborn = RedisRegistry(shared_redis_url, node_id)
    presence = Presence(reborn)
    await reborn.open()
    try:
        assert await watcher.room_users(room) == []
        assert await presence.next() == ("user:left", room, "olga", [])
    finally:
        await reborn.close()


async def test_close_removes_the_nodes_connections(nodes):
    one, two = await nodes(), await nodes()
    room = unique("chat")
    await one.add_connection("c1", "carol")
    await one.join("c1", room)
    await two.add_connection("c2", "dave")
    await two.join("c2", room)
    await one.close()
    assert await two.room_users(room) == ["dave"]


async def test_every_key_of_the_registry_is_in_one_slot_whatever_braces_the_ids_hold(
        nodes, shared_redis_url):
    """The scripts touch a connection's, its room's and its node's keys at once, which a
    cluster allows within one hash slot only: every key is under the ``{collab}`` tag,
    and a ``{`` or ``}`` in an id can neither move a key out of it nor make two collide."""
    tag = uuid.uuid4().hex[:8]
    reg = await nodes(node_id=f"node-}}{{{tag}}}")
    rooms = [f"chat_{{{tag}}}", f"chat_{tag}}}", f"{{{tag}",
             f"{redis_registry.PREFIX}room-users:x{tag}"]  # a room named like another key
    sids = [f"{{sid}}-{tag}-{n}" for n in range(len(rooms))]
    for n, (sid, room) in enumerate(zip(sids, rooms, strict=True)):
        await reg.add_connection(sid, f"user{{{n}}}")
        assert await reg.join(sid, room) is True
    for n, room in enumerate(rooms):  # no two rooms share a key
        assert await reg.room_users(room) == [f"user{{{n}}}"]

    target = RedisTarget.parse(shared_redis_url)
    client = open_client(target, decode_responses=True)
    try:
        ours = [key async for key in client.scan_iter(match=f"*{tag}*", count=1000)]
        expected = {redis_registry.PREFIX + name for name in (
            *(f"conn:{sid}" for sid in sids), *(f"conn-rooms:{sid}" for sid in sids),
            *(f"room-sids:{room}" for room in rooms), *(f"room-users:{room}" for room in rooms),
            f"node-sids:{reg.node_id}", f"node:{reg.node_id}")}
        assert set(ours) == expected
        slot = key_slot(b"collab")
        assert {key_slot(key.encode()) for key in ours} == {slot}
        if target.cluster:  # and the cluster itself agrees, and holds them where it says
            assert {await client.cluster_keyslot(key) for key in ours} == {slot}
            assert await client.cluster_countkeysinslot(slot) >= len(ours)
    finally:
        await client.aclose()


def test_a_redis_url_is_parsed_once_into_a_target():
    single = RedisTarget.parse("rediss://:pw@cache:6380/2")
    assert (single.cluster, single.tls, single.seeds) == (False, True, (("cache", 6380),))
    cluster = RedisTarget.parse("redis+cluster://:s3cret@10.0.0.1:7000,[::1]:7001,h3")
    assert (cluster.cluster, cluster.tls) == (True, False)
    assert cluster.seeds == (("10.0.0.1", 7000), ("::1", 7001), ("h3", 6379))
    assert cluster.display == str(cluster) == "redis+cluster://:***@10.0.0.1:7000,[::1]:7001,h3"
    assert "s3cret" not in repr(cluster)
    assert RedisTarget.parse("rediss+cluster://h1:7000/0").tls
    for bad in ("redis+cluster://", "redis+cluster://h1:7000,,h2:7001", "redis+cluster://h:0",
                "redis+cluster://h1:7000/1", "redis+cluster://h1:7000?db=1",
                "redis+cluster://h1:7000?nope=1", "redis://h/x", "memcached://h"):
        with pytest.raises(ValueError):
            RedisTarget.parse(bad)


# -- Redis: an outage -----------------------------------------------------------


@pytest.fixture(params=list(REDIS_URLS))
def own_redis(request, tmp_path):
    """A Redis of this test's own, to stop, restart (empty) and pause: a single
    redis-server, then a whole Redis Cluster."""
    server = RedisServer(tmp_path) if request.param == "redis" else RedisClusterServer(tmp_path)
    if server.external:
        pytest.skip(f"{server.external_env} is set: cannot stop that Redis")
    server.start()
    yield server
    server.stop()


async def test_an_outage_answers_unavailable_then_state_is_rebuilt(own_redis):
    reg = RedisRegistry(own_redis.url, unique("node"), heartbeat_interval=0.1)
    presence = Presence(reg)
    await reg.open()
    try:
        room, other = unique("chat"), unique("document")
        await reg.add_connection("a1", "alice")
        await reg.add_connection("b1", "bob")
        await reg.join("a1", room)
        await reg.join("b1", room)
        await reg.join("b1", other)

        own_redis.stop()
        with pytest.raises(Unavailable):
            await reg.ping()
        with pytest.raises(Unavailable):
            await reg.join("a1", other)
        with pytest.raises(Unavailable):
            await reg.add_connection("c1", "carol")
        with pytest.raises(Unavailable):
            await reg.room_users(room)
        # a connection that closes during the outage is still removed
        with pytest.raises(Unavailable):
            await reg.remove_connection("b1")

        own_redis.start()  # a fresh Redis: empty
        deadline = time.monotonic() + 10
        while await reg.room_users(room) != ["alice"]:  # the next heartbeats restore it
            assert time.monotonic() < deadline, "presence was not rebuilt"
            await asyncio.sleep(0.05)
        # nobody was told that anyone left, so nobody is told they are back
        assert presence.events.empty()
        assert await reg.room_users(other) == []
        assert await reg.join("a1", other) is True
        await reg.ping()
    finally:
        await reg.close()


class PasswordRedis(RedisServer):
    """A redis-server that wants a password, given in the URL."""

    def local_url(self) -> str:
        return f"redis://:s3cret%21@127.0.0.1:{self.port}/2"

    def argv(self) -> list[str]:
        return [*super().argv(), "--requirepass", "s3cret!"]


@pytest.mark.parametrize("backend", list(REDIS_URLS))
async def test_a_password_in_the_url_is_used_and_never_shown(tmp_path, backend):
    server = (PasswordRedis(tmp_path, external_url=None) if backend == "redis"
              else RedisClusterServer(tmp_path, password="s3cret!"))
    if server.external:
        pytest.skip(f"{server.external_env} is set")
    server.start()
    try:
        assert "s3cret%21@" in server.url
        reg = RedisRegistry(server.url, unique("node"))
        assert "s3cret" not in reg.display_url
        await reg.open()
        try:
            await reg.add_connection("a1", "alice")
            assert await reg.join("a1", "chat_x") is True
            assert await reg.room_users("chat_x") == ["alice"]
        finally:
            await reg.close()

        wrong = RedisRegistry(server.url.replace("s3cret%21", "nope"), unique("node"))
        with pytest.raises(Unavailable) as refused:
            await wrong.open()
        assert "nope" not in refused.value.message
        await wrong.close()
    finally:
        server.stop()


async def test_a_hung_redis_answers_unavailable_within_the_socket_timeout(own_redis):
    reg = RedisRegistry(own_redis.url, unique("node"), heartbeat_interval=0.1)
    await reg.open()
    try:
        room, other = unique("chat"), unique("document")
        await reg.add_connection("a1", "alice")
        await reg.add_connection("b1", "bob")
        await reg.join("a1", room)

        own_redis.pause()  # a hang, not a refusal: every call waits for a reply
        try:
            async def timed(call) -> float:
                start = time.monotonic()
                with pytest.raises(Unavailable):
                    await call
                return time.monotonic() - start

            took = await asyncio.gather(
                timed(reg.join("b1", other)), timed(reg.room_users(room)),
                timed(reg.ping()), timed(reg.add_connection("c1", "carol")))
            assert max(took) < SOCKET_TIMEOUT + 0.4, took
            # undoing the failed join (the app does at once) does not wait for Redis again
            start = time.monotonic()
            assert await reg.leave("b1", other) is False
            assert time.monotonic() - start < 0.1
        finally:
            own_redis.resume()

        # the join may have reached Redis and run when it resumed: it is undone, unannounced
        deadline = time.monotonic() + 10
        while await reg.room_users(other) != [] or reg._undo:
            assert time.monotonic() < deadline, "the failed join was never undone"
            await asyncio.sleep(0.05)
        assert await reg.room_users(room) == ["alice"]
        assert await reg.join("b1", other) is True  # and a new join works as ever
        assert await reg.room_users(other) == ["bob"]
    finally:
        await reg.close()


@pytest.mark.parametrize("closes", ["while-down", "before-the-return-is-noticed"])
async def test_a_connection_closed_while_redis_was_down_is_announced_once_it_returns_empty(
        own_redis, closes):
    # two nodes; bob has a tab on each, in ``room``; only the tab on ``one`` is in ``other``
    one = RedisRegistry(own_redis.url, unique("node"), heartbeat_interval=0.1, heartbeat_ttl=0.6)
    two = RedisRegistry(own_redis.url, unique("node"), heartbeat_interval=0.1, heartbeat_ttl=0.6)
    seen = [Presence(one), Presence(two)]
    await one.open()
    await two.open()
    try:
        room, other = unique("chat"), unique("document")
        await one.add_connection("a1", "alice")
        await one.add_connection("b1", "bob")
        await two.add_connection("b2", "bob")
        await one.add_connection("c1", "carol")
        for sid, rooms in {"a1": [room], "b1": [room, other], "b2": [room], "c1": [other]}.items():
            for r in rooms:
                assert await (two if sid == "b2" else one).join(sid, r) in (True, False)

        own_redis.stop()
        if closes == "while-down":
            with pytest.raises(Unavailable):
                await one.remove_connection("b1")
            with pytest.raises(Unavailable):
                await one.remove_connection("c1")  # carol's only tab
            own_redis.start()  # empty: nobody there remembers b1 or c1
        else:  # Redis is back, empty, and the removals find nothing to remove
            one._task.cancel()  # no heartbeat of ``one`` notices the return before them
            own_redis.start()
            assert await one.remove_connection("b1") == []
            assert await one.remove_connection("c1") == []
            one._task = asyncio.ensure_future(one._run())

        events = [await seen[0].next(), await seen[0].next()]
        assert sorted(events) == [("user:left", other, "bob", []),
                                  ("user:left", other, "carol", [])]
        assert await one.room_users(room) == await two.room_users(room) == ["alice", "bob"]
        assert await one.room_users(other) == []
        await asyncio.sleep(1.0)  # several heartbeats and sweeps: nothing more may come
        assert seen[0].events.empty() and seen[1].events.empty()  # once, and bob stays in room
    finally:
        await one.close()
        await two.close()


async def test_handshakes_failed_in_an_outage_are_bounded_and_worked_off_a_few_a_beat(
        own_redis, monkeypatch):
    """Clients retrying their handshake through an outage leave a removal each (the script
    may have run); those are capped, and worked off a few per heartbeat, so the beat after
    a long outage is not late by thousands of round trips."""
    monkeypatch.setattr(redis_registry, "MAX_FAILED_ADDS", 5)
    monkeypatch.setattr(redis_registry, "REMOVALS_PER_BEAT", 2)
    reg = RedisRegistry(own_redis.url, unique("node"), heartbeat_interval=0.05)
    await reg.open()
    try:
        own_redis.stop()
        for n in range(8):
            with pytest.raises(Unavailable):
                await reg.add_connection(f"s{n}", "alice")
        assert len(reg._removals) == 5  # the cap: three were not remembered
        finished = []  # removals finished by each heartbeat
        all_done = asyncio.Event()
        finish = reg._finish_removals

        async def counted() -> None:
            before = len(reg._removals)
            await finish()
            finished.append(before - len(reg._removals))
            if not reg._removals:
                all_done.set()

        monkeypatch.setattr(reg, "_finish_removals", counted)
        own_redis.start()
        await asyncio.wait_for(all_done.wait(), 10)
        assert sum(finished) == 5 and max(finished) <= 2, finished
        assert reg._failed_adds == 0
    finally:
        # a beat every 50 ms makes it likely that close() cancels the heartbeat as a
        # command's reply arrives, the moment Python 3.11 drops a cancellation at
        # (collab/tasks.py); this used to wait 60 s for the test runner's timeout
        await asyncio.wait_for(reg.close(), 5)
