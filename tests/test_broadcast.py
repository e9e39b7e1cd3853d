"""The broadcast layer across nodes (collab/broadcast/): a channel per room, so a node
receives only the rooms it hosts; subscriptions that race joins and leaves; Redis
restarts; the bytes between nodes.

In-process nodes on a real redis-server; "another node" is either a second
in-process node or :class:`~harness.OtherNode` publishing on a room's channel.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from harness import (
    WAIT,
    OtherNode,
    channel_subscribers,
    move_slot,
    nodes,
    publish,
    redis_client,
    scrape,
    scraped,
    unique,
)
from services import RedisClusterServer, RedisServer

from collab.broadcast.channels import LinkLost, open_transport
from collab.broadcast.wire import ASK, EMIT, REVOKE, VERSION, Envelope, channel_for
from collab.redisconn import RedisTarget


@pytest.fixture(params=["redis", "cluster"])
def redis_url(request):
    """Every test here runs on a single Redis and on a Redis Cluster (sharded pub/sub)."""
    return request.getfixturevalue(
        "redis_url" if request.param == "redis" else "redis_cluster_url")


@pytest.fixture
def pair(io_loop, redis_url, mongo_db):
    with nodes(io_loop, redis_url, mongo_db, 2) as servers:
        yield servers


@pytest.fixture
def node(io_loop, redis_url, mongo_db):
    with nodes(io_loop, redis_url, mongo_db, 1) as servers:
        yield servers[0]


@pytest.fixture
def other(io_loop, redis_url):
    other = OtherNode(redis_url)
    yield other
    io_loop.run_sync(other.close)


RECEIVED = 'collab_pubsub_messages_received_total{kind="%s"}'
PUBLISHED = 'collab_pubsub_messages_published_total{kind="%s"}'
CHANNELS = "collab_pubsub_channels"


async def subscribers(redis_url: str, room: str) -> int:
    """How many connections Redis has subscribed to ``room``'s channel."""
    return await channel_subscribers(redis_url, channel_for(room))


async def until_subscribers(redis_url: str, room: str, count: int,
                            timeout: float = WAIT) -> None:
    """Unsubscribing happens after the leave's ack, with no event to await: poll Redis."""
    deadline = time.monotonic() + timeout
    while (got := await subscribers(redis_url, room)) != count:
        assert time.monotonic() < deadline, f"{room}: {got} subscribers, not {count}"
        await asyncio.sleep(0.01)


async def chat(owner, *members: str) -> str:
    chat_id = unique("chat")
    await owner.ok("chat:create", {"chat_id": chat_id, "members": list(members)})
    return chat_id


# -- isolation ---------------------------------------------------------------


async def test_a_node_receives_nothing_of_a_room_it_hosts_no_member_of(pair, redis_url):
    a, b = pair
    alice, carol = await a.connect("alice"), await a.connect("carol")
    bob = await b.connect("bob")
    busy = await chat(alice)  # only ever on node A
    quiet = await chat(alice, "bob", "carol")  # bob's, on node B
    await alice.ok("chat:join", {"chat_id": busy})
    await bob.ok("chat:join", {"chat_id": quiet})
    assert await subscribers(redis_url, f"chat_{busy}") == 1  # node A alone
    assert (await scrape(b.url))[CHANNELS] == 1
    before_b, before_a = await scrape(b.url), await scrape(a.url)

    for i in range(20):
        await alice.ok("chat:message", {"chat_id": busy, "content": f"m{i}"})
    # one message in bob's room after them: one Redis connection delivers in publish
    # order, so had node B been subscribed to the busy room, those 20 came first
    await carol.ok("chat:join", {"chat_id": quiet})
    assert await bob.next("user:joined") == {"user_id": "carol", "chat_id": quiet}
    sent = await carol.ok("chat:message", {"chat_id": quiet, "content": "hello bob"})
    assert await bob.next("chat:message") == {"message": sent["message"]}

    after_b, after_a = await scrape(b.url), await scrape(a.url)
    assert after_b[RECEIVED % "broadcast"] - before_b[RECEIVED % "broadcast"] == 1
    assert after_b[RECEIVED % "presence"] - before_b[RECEIVED % "presence"] == 1
    assert after_a[PUBLISHED % "broadcast"] - before_a[PUBLISHED % "broadcast"] == 21
    # node A hears node B about the quiet room only (nothing, here: B sent nothing)
    assert after_a[RECEIVED % "broadcast"] == before_a[RECEIVED % "broadcast"]

    # bob enters the busy room: node B subscribes, and from then on hears it
    await alice.ok("chat:invite", {"chat_id": busy, "user_id": "bob"})
    await bob.ok("chat:join", {"chat_id": busy})
    assert await alice.next("user:joined") == {"user_id": "bob", "chat_id": busy}
    assert await subscribers(redis_url, f"chat_{busy}") == 2
    assert (await scrape(b.url))[CHANNELS] == 2
    sent = await alice.ok("chat:message", {"chat_id": busy, "content": "now bob too"})
    assert await bob.next("chat:message") == {"message": sent["message"]}
    assert (await scrape(b.url))[RECEIVED % "broadcast"] - after_b[RECEIVED % "broadcast"] == 1

    # and leaves it: node B unsubscribes (Redis is asked after the leave's ack)
    await bob.ok("chat:leave", {"chat_id": busy})
    await until_subscribers(redis_url, f"chat_{busy}", 1)
    assert await scraped(b.url, CHANNELS, 1) == 1


async def test_a_disconnect_unsubscribes_the_rooms_it_was_the_last_member_of(node, redis_url):
    alice, bob = await node.connect("alice"), await node.connect("bob")
    chat_id = await chat(alice, "bob")
    document_id = unique("doc")
    await alice.ok("documents:create", {"document_id": document_id})
    await alice.ok("chat:join", {"chat_id": chat_id})
    await alice.ok("documents:join", {"document_id": document_id})
    await bob.ok("chat:join", {"chat_id": chat_id})
    await alice.disconnect()
    await until_subscribers(redis_url, f"document_{document_id}", 0)
    assert await subscribers(redis_url, f"chat_{chat_id}") == 1  # bob is still there
    await bob.disconnect()
    await until_subscribers(redis_url, f"chat_{chat_id}", 0)
    assert node.app.broadcaster.subscribed_rooms == set()
    assert node.app.broadcaster.holdback.rooms == {}


# -- races -------------------------------------------------------------------


async def test_rejoining_while_the_unsubscribe_is_in_flight_misses_nothing(node, other,
                                                                           redis_url):
    """Leave (the node starts unsubscribing), join again at once (it must subscribe again,
    after the unsubscribe): a broadcast published after the join's ack arrives, every
    round, and Redis ends with exactly the subscriptions the members need."""
    alice, bob = await node.connect("alice"), await node.connect("bob")
    chat_id = await chat(alice, "bob")
    room = f"chat_{chat_id}"
    for round_ in range(40):
        client = (alice, bob)[round_ % 2]
        await client.ok("chat:join", {"chat_id": chat_id})
        await client.ok("chat:leave", {"chat_id": chat_id})
        if round_ % 3:  # and sometimes a leave that Redis has already seen
            await until_subscribers(redis_url, room, 0)
        await client.ok("chat:join", {"chat_id": chat_id})
        marker = {"chat_id": chat_id, "user_id": "zoe", "typing": round_ % 2 == 0,
                  "round": round_}
        await other.emit("chat:typing", marker, room)
        assert await client.next("chat:typing") == marker
        await client.ok("chat:leave", {"chat_id": chat_id})
    await until_subscribers(redis_url, room, 0)
    assert await scraped(node.url, CHANNELS, 0) == 0


async def test_subscribing_again_before_redis_confirmed_the_unsubscribe_keeps_the_link(
        redis_url):
    """The race above made certain, on one link: the leave's unsubscribe and the join's
    subscribe both go out before the link reads Redis' answer to the first. That answer
    (read after the new subscribe went out) is the leave's, not Redis taking the channel
    away: the link lives on, subscribed, and delivers. On a cluster it used to end the
    link, and what the other nodes published until it was made again was lost."""
    transport = open_transport(RedisTarget.parse(redis_url))
    link = transport.link(f"collab:node:{unique('test')}")
    room = f"chat_{unique('chat')}"
    channel = channel_for(room)
    try:
        await link.open()
        await link.subscribe([channel])
        # nothing between the two lets the link's reader run (a command is written
        # without waiting for the socket), so the unsubscribe's answer is read after
        # the subscribe went out, whatever the load
        await link.unsubscribe([channel])
        await link.subscribe([channel])
        await transport.publish([(channel, b"after the join")])
        received = link.messages()
        assert await asyncio.wait_for(anext(received), WAIT) == (channel, b"after the join")
        assert await subscribers(redis_url, room) == 1
        await link.unsubscribe([channel])  # and a leave with nothing behind it leaves
        await until_subscribers(redis_url, room, 0)
        await asyncio.wait_for(link.subscribe([channel]), WAIT)  # on the same link
        await transport.publish([(channel, b"again")])
        assert await asyncio.wait_for(anext(received), WAIT) == (channel, b"again")
    finally:
        await link.close()
        await transport.close()


@pytest.fixture
def private_cluster(tmp_path):
    """A Redis Cluster of this test's own, whose slots it may move."""
    cluster = RedisClusterServer(tmp_path)
    if cluster.external:
        pytest.skip("an external Redis Cluster is configured: its slots are not ours to move")
    cluster.start()
    yield cluster
    cluster.stop()


async def test_a_subscription_the_cluster_takes_away_still_ends_the_link(private_cluster):
    """Counting the unsubscribes in flight hides no real loss: after the race above, a
    resharding that moves the channel's slot away (its shard drops the subscription by
    itself) still ends the link, so that the node subscribes again where the slot is now,
    and checks access in its rooms, since what was published meanwhile is lost."""
    transport = open_transport(RedisTarget.parse(private_cluster.url))
    link = transport.link(f"collab:node:{unique('test')}")
    channel = channel_for(f"chat_{unique('chat')}")
    try:
        await link.open()
        await link.subscribe([channel])
        await link.unsubscribe([channel])  # the race of the test above
        await link.subscribe([channel])
        await transport.publish([(channel, b"before")])
        received = link.messages()
        # read after the unsubscribe's answer (one shard, one connection): that is spent
        assert await asyncio.wait_for(anext(received), WAIT) == (channel, b"before")
        await move_slot(private_cluster.url, channel)
        with pytest.raises(LinkLost, match="dropped the subscription"):
            await asyncio.wait_for(anext(received), WAIT)
    finally:
        await link.close()
        await transport.close()


async def test_concurrent_first_joins_read_the_position_once(node, other):
    """Three clients enter an empty room at once: one subscription, one position read,
    and the broadcasts after it arrive in order at all three."""
    clients = [await node.connect(user) for user in ("alice", "bob", "carol")]
    chat_id = await chat(clients[0], "bob", "carol")
    reads = 0
    position = node.app.membership.room_position

    async def counted(room: str) -> int | None:
        nonlocal reads
        reads += 1
        return await position(room)

    node.app.membership.room_position = counted
    await asyncio.gather(*(c.ok("chat:join", {"chat_id": chat_id}) for c in clients))
    assert reads == 1
    for seq in (2, 1, 3):
        await other.chat_message(chat_id, seq)
    for client in clients:
        assert [(await client.next("chat:message"))["message"]["seq"]
                for _ in range(3)] == [1, 2, 3]


# -- Redis restarts ----------------------------------------------------------


@pytest.fixture(params=["redis", "cluster"])
def private_redis(request, tmp_path):
    redis = (RedisServer if request.param == "redis" else RedisClusterServer)(tmp_path)
    if redis.external:
        pytest.skip("an external Redis is configured: cannot restart it")
    redis.start()
    yield redis
    redis.stop()


@pytest.fixture
def restarted_node(io_loop, private_redis, mongo_db):
    with nodes(io_loop, private_redis.url, mongo_db, 1) as servers:
        yield servers[0]


async def test_after_a_redis_restart_every_hosted_room_is_subscribed_again(
        restarted_node, private_redis):
    node = restarted_node
    alice = await node.connect("alice")
    chat_id = await chat(alice)
    document_id = unique("doc")
    await alice.ok("documents:create", {"document_id": document_id})
    await alice.ok("chat:join", {"chat_id": chat_id})
    await alice.ok("documents:join", {"document_id": document_id})

    private_redis.restart()  # comes back empty: no subscriptions, no data
    for room in (f"chat_{chat_id}", f"document_{document_id}"):
        await until_subscribers(private_redis.url, room, 1)
    other = OtherNode(private_redis.url)
    try:
        typing = {"chat_id": chat_id, "user_id": "zoe", "typing": True}
        await other.emit("chat:typing", typing, f"chat_{chat_id}")
        assert await alice.next("chat:typing") == typing
        # ordered delivery goes on from the room's position (version 0 here)
        document = {"id": document_id, "title": "", "content": "1", "version": 1,
                    "created_by": "alice", "created_at": "", "updated_by": "zoe",
                    "updated_at": ""}
        await other.emit("documents:updated", {"document": document, "user_id": "zoe"},
                         f"document_{document_id}", 1)
        assert (await alice.next("documents:updated"))["document"]["version"] == 1
    finally:
        await other.close()


# -- the bytes between nodes -------------------------------------------------


def test_an_envelope_round_trips_with_attachments_and_odd_ids():
    envelope = Envelope("host\n1", EMIT, 'room_"x"\n', 7, ("sid1", "sid2"), "documents:x",
                        '451-["documents:x",{"_placeholder":true,"num":0}]',
                        (b"\x00\xff\n", b""))
    data = envelope.encode()
    assert data.count(b"\n") == 1  # the header is one line whatever the ids hold
    assert Envelope.decode(data) == envelope
    revoke = Envelope("h", REVOKE, "document_d", user_id="bob")
    assert Envelope.decode(revoke.encode()) == revoke
    ask = Envelope("h", ASK, "document_d#live")
    assert Envelope.decode(ask.encode()) == ask and ask.metric_kind == "presence"


@pytest.mark.parametrize("data", [
    b"", b"no newline", b"not json\n", b"[1,2]\n", b'{"h":"x"}\n',
    b'{"h":"x","v":%d,"k":"emit","r":"chat_c"}\n' % (VERSION + 1),  # a newer node
    b'{"h":"x","v":1,"k":"shout","r":"chat_c"}\n',
    b'{"h":"x","v":1,"k":"emit","r":"chat_c","p":true}\n',
    b'{"h":"x","v":1,"k":"emit","r":"chat_c","p":"5"}\n',
    b'{"h":"x","v":1,"k":"emit","r":"chat_c","s":[1]}\n',
    b'{"h":"x","v":1,"k":"emit","r":"chat_c","a":["!!"]}\n',
    b'{"h":"x","v":1,"k":"emit","r":"chat_c"}\n\xff\xfe',
])
def test_what_is_not_an_envelope_is_ignored(data):
    assert Envelope.decode(data) is None


async def test_garbage_on_a_room_channel_is_ignored_and_delivery_goes_on(node, other,
                                                                         redis_url):
    alice = await node.connect("alice")
    chat_id = await chat(alice)
    await alice.ok("chat:join", {"chat_id": chat_id})
    client = redis_client(redis_url)
    try:
        for junk in (b"junk", b'{"h":"x","v":1}\nzz', b"\xff" * 100):
            await publish(client, channel_for(f"chat_{chat_id}"), junk)
    finally:
        await client.aclose()
    typing = {"chat_id": chat_id, "user_id": "zoe", "typing": True}
    await other.emit("chat:typing", typing, f"chat_{chat_id}")
    assert await alice.next("chat:typing") == typing


async def test_binary_payloads_cross_nodes(node, other):
    """Socket.IO binary attachments (the Yjs updates of live documents) survive the trip."""
    alice = await node.connect("alice")
    document_id = unique("doc")
    await alice.ok("documents:create", {"document_id": document_id})
    await alice.ok("documents:join", {"document_id": document_id})
    payload = {"document_id": document_id, "update": bytes(range(256)) * 3}
    await other.emit("documents:yupdate", payload, f"document_{document_id}")
    got = await alice.next("documents:yupdate")
    assert got == payload


# -- what a join covered (collab/broadcast/joins.py) -------------------------------------


def test_a_join_covers_broadcasts_up_to_its_position_and_its_mark_goes_after():
    from collab.broadcast.joins import READING, JoinPositions

    joins = JoinPositions()
    members = {"s1", "s2"}
    joins.mark("room", "s1", READING)  # its join is reading: everything delivered is in it
    assert joins.skip("room", 4, members) == ["s1"]
    joins.mark("room", "s1", 6)  # the join's answer covers up to 6
    assert joins.skip("room", 5, members) == ["s1"]
    assert joins.skip("room", 6, members) == ["s1"]
    assert joins.skip("room", 7, members) == [] and len(joins) == 0  # forgotten at 6
    joins.mark("room", "s2", 9)
    assert joins.skip("room", 8, {"s1"}) == ["s2"] and len(joins) == 0  # s2 left the room
    joins.mark("room", "s1", READING)
    assert joins.skip("room", 3, set()) == ["s1"]  # (not in the room yet: kept)
    joins.forget_sid("s1", ["room"])
    assert len(joins) == 0
