"""Several ``collab serve`` processes sharing Redis and MongoDB behave as one server.

Each node is a real subprocess started the way docs/deployment.md says, with a
real redis-server and a Mongo wire server; clients are real Socket.IO clients
connected to different nodes. Run with ``tox -e cluster`` (``pytest -m cluster``).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import socketio
from conftest import running_server
from harness import (
    SECRET,
    WAIT,
    Client,
    OtherNode,
    PycrdtPeer,
    YjsProviders,
    cancel_leftover_tasks,
    make_settings,
    make_token,
    unique,
)
from process import CollabProcess
from services import RedisClusterServer, RedisServer, with_database
from tornado.httpclient import AsyncHTTPClient

from collab.awareness import MAX_IDS_PER_CONNECTION, Entry, decode_update, encode_update
from collab.broadcast.holdback import GAP_TIMEOUT
from collab.livedocs import LiveDocuments
from collab.redisconn import RedisTarget

pytestmark = pytest.mark.cluster

#: a dead node's heartbeat lives 10 s and survivors sweep every 3 s
PURGE_DEADLINE = 30.0


#: the per-node settings docs/deployment.md tells people to use
NODE_CONFIG = Path(__file__).parent.parent / "config" / "cluster-node.example.toml"


def start_node(tmp: Path, name: str, redis_url: str, storage_url: str,
               settings: dict[str, str] | None = None) -> CollabProcess:
    """``collab serve`` as docs/deployment.md says: the shared file, the rest from env
    (``settings``: more ``COLLAB_*`` variables)."""
    cwd = tmp / name
    cwd.mkdir(exist_ok=True)
    env = {
        "COLLAB_CONFIG": str(NODE_CONFIG),
        "COLLAB_REGISTRY_URL": redis_url,
        "COLLAB_STORAGE_URL": storage_url,
        "COLLAB_JWT_SECRET": SECRET,
        "COLLAB_NODE_ID": name,
        "COLLAB_HOST": "127.0.0.1",
        **(settings or {}),
    }
    node = CollabProcess(cwd, env)
    node.env["COLLAB_PORT"] = str(node.port)
    return node.start()


class Cluster:
    def __init__(self, tmp: Path, redis: RedisServer | RedisClusterServer,
                 storage_url: str) -> None:
        self.tmp = tmp
        self.redis = redis
        self.storage_url = storage_url
        self.nodes: list[CollabProcess] = []

    def add(self, name: str, settings: dict[str, str] | None = None) -> CollabProcess:
        node = start_node(self.tmp, name, self.redis.url, self.storage_url, settings)
        self.nodes.append(node)
        return node

    def remove(self, node: CollabProcess) -> None:
        """Stop a node added for one test, so the next ones do not share the CPU with it."""
        node.stop()
        self.nodes.remove(node)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


#: every test here runs with the nodes on a single Redis and on a Redis Cluster
BACKENDS = {"redis": RedisServer, "cluster": RedisClusterServer}


def make_cluster(tmp: Path, mongodb_url: str, names: list[str],
                 backend: str = "redis") -> Cluster:
    redis = BACKENDS[backend](tmp)
    redis.start()
    cluster = Cluster(tmp, redis, with_database(mongodb_url, unique("cluster")))
    try:
        for name in names:
            cluster.add(name)
    except BaseException:
        cluster.stop()
        redis.stop()
        raise
    return cluster


@pytest.fixture(scope="module", params=list(BACKENDS))
def cluster(request, tmp_path_factory, mongodb_url):
    """Two nodes, A and B, for the tests that do not break anything shared."""
    cluster = make_cluster(tmp_path_factory.mktemp("cluster"), mongodb_url, ["node-a", "node-b"],
                           request.param)
    yield cluster
    cluster.stop()
    cluster.redis.stop()


@pytest.fixture
def a(cluster) -> CollabProcess:
    return cluster.nodes[0]


@pytest.fixture
def b(cluster) -> CollabProcess:
    return cluster.nodes[1]


@pytest.fixture
def connect(io_loop):
    """``await connect(node, user_id)``: a Socket.IO client on that node, closed afterwards."""
    clients: list[Client] = []

    async def _connect(node: CollabProcess, user_id: str) -> Client:
        sio = socketio.AsyncClient(reconnection=False)
        client = Client(sio)
        await sio.connect(node.url, auth={"token": make_token(user_id)},
                          transports=["websocket"], wait_timeout=WAIT)
        clients.append(client)
        return client

    yield _connect

    async def close() -> None:
        for client in clients:
            if client.sio.connected:
                await client.sio.disconnect()

    io_loop.run_sync(close)
    io_loop.run_sync(cancel_leftover_tasks)


async def get(node: CollabProcess, path: str):
    return await AsyncHTTPClient().fetch(node.url + path, raise_error=False, request_timeout=10)


async def connections(node: CollabProcess) -> float:
    """The node's ``collab_connections`` gauge."""
    body = (await get(node, "/metrics")).body.decode()
    line = next(x for x in body.splitlines() if x.startswith("collab_connections "))
    return float(line.split()[1])


async def wait_for_connections(node: CollabProcess, count: float, timeout: float = 5) -> None:
    """Wait until the node counts ``count`` connections (a close has no event to await)."""
    deadline = time.monotonic() + timeout
    while await connections(node) != count:
        assert time.monotonic() < deadline, f"{node.url} never reached {count} connections"
        await asyncio.sleep(0.02)


async def shared_chat(owner: Client, *members: str) -> str:
    chat_id = unique("chat")
    await owner.ok("chat:create", {"chat_id": chat_id, "members": list(members)})
    return chat_id


async def shared_document(owner: Client, *editors: str) -> str:
    document_id = unique("doc")
    await owner.ok("documents:create", {"document_id": document_id, "content": ""})
    for user_id in editors:
        await owner.ok("documents:share",
                       {"document_id": document_id, "user_id": user_id, "role": "editor"})
    return document_id


# -- broadcasts and presence across nodes ----------------------------------------


async def test_document_events_reach_the_other_node(a, b, connect):
    alice, bob = await connect(a, "alice"), await connect(b, "bob")
    document_id = await shared_document(alice, "bob")
    assert (await alice.ok("documents:join", {"document_id": document_id}))["users"] == ["alice"]
    joined = await bob.ok("documents:join", {"document_id": document_id})
    assert joined["users"] == ["alice", "bob"]
    assert await alice.next("user:joined") == {"user_id": "bob", "document_id": document_id}

    update = {"document_id": document_id, "content": "from B", "version": 1}
    stored = (await bob.ok("documents:update", update))["document"]
    assert await alice.next("documents:updated") == {"document": stored, "user_id": "bob"}

    await alice.ok("documents:leave", {"document_id": document_id})
    assert await bob.next("user:left") == {"user_id": "alice", "document_id": document_id}
    assert bob.pending("documents:updated") == []  # not sent back to its author


async def test_chat_events_reach_the_other_node(a, b, connect):
    alice, bob = await connect(a, "alice"), await connect(b, "bob")
    chat_id = await shared_chat(alice, "bob")
    await alice.ok("chat:join", {"chat_id": chat_id})
    assert (await bob.ok("chat:join", {"chat_id": chat_id}))["users"] == ["alice", "bob"]
    assert await alice.next("user:joined") == {"user_id": "bob", "chat_id": chat_id}

    sent = (await alice.ok("chat:message", {"chat_id": chat_id, "content": "hi"}))["message"]
    assert await bob.next("chat:message") == {"message": sent}
    assert await alice.next("chat:message") == {"message": sent}

    await bob.ok("chat:typing", {"chat_id": chat_id, "typing": True})
    assert await alice.next("chat:typing") == {"chat_id": chat_id, "user_id": "bob",
                                               "typing": True}

    await bob.disconnect()
    assert await alice.next("user:left") == {"user_id": "bob", "chat_id": chat_id}


async def test_users_lists_everyone_across_nodes(a, b, connect):
    carol = await connect(a, "carol")
    chat_id = await shared_chat(carol, "alice", "bob", "dave")
    await carol.ok("chat:join", {"chat_id": chat_id})
    alice = await connect(b, "alice")
    assert (await alice.ok("chat:join", {"chat_id": chat_id}))["users"] == ["alice", "carol"]
    alice_again = await connect(a, "alice")
    assert (await alice_again.ok("chat:join", {"chat_id": chat_id}))["users"] == \
        ["alice", "carol"]
    bob = await connect(b, "bob")
    assert (await bob.ok("chat:join", {"chat_id": chat_id}))["users"] == \
        ["alice", "bob", "carol"]
    dave = await connect(a, "dave")
    assert (await dave.ok("chat:join", {"chat_id": chat_id}))["users"] == \
        ["alice", "bob", "carol", "dave"]


async def test_fifty_concurrent_messages_from_both_nodes_arrive_in_seq_order(a, b, connect):
    senders = [await connect(node, user) for node, user in
               [(a, "alice"), (b, "bob"), (a, "carol"), (b, "dave")]]
    chat_id = await shared_chat(senders[0], "bob", "carol", "dave")
    for client in senders:
        await client.ok("chat:join", {"chat_id": chat_id})
    watchers = [await connect(a, "erin"), await connect(b, "frank")]
    await senders[0].ok("chat:invite", {"chat_id": chat_id, "user_id": "erin"})
    await senders[0].ok("chat:invite", {"chat_id": chat_id, "user_id": "frank"})
    for client in watchers:
        await client.ok("chat:join", {"chat_id": chat_id})
    everyone = senders + watchers

    async def send(client: Client, count: int) -> list[int]:
        acks = []
        for i in range(count):
            payload = {"chat_id": chat_id, "content": f"{i}", "client_id": unique("m")}
            acks.append((await client.ok("chat:message", payload))["message"]["seq"])
        return acks

    shares = zip(senders, [13, 13, 12, 12], strict=True)
    sent = await asyncio.gather(*(send(client, count) for client, count in shares))
    assert sorted(seq for acks in sent for seq in acks) == list(range(1, 51))

    async def receive(client: Client) -> list[int]:
        return [(await client.next("chat:message", timeout=10))["message"]["seq"]
                for _ in range(50)]

    received = await asyncio.gather(*(receive(c) for c in everyone))
    for seqs in received:
        assert seqs == list(range(1, 51)), seqs
    history = await watchers[0].ok("chat:history", {"chat_id": chat_id, "limit": 50})
    assert [m["seq"] for m in history["messages"]] == list(range(1, 51))


async def test_a_user_with_tabs_on_two_nodes_leaves_when_the_last_closes(a, b, connect):
    bob, carol = await connect(a, "bob"), await connect(b, "carol")
    chat_id = await shared_chat(bob, "alice", "carol")
    await bob.ok("chat:join", {"chat_id": chat_id})
    await carol.ok("chat:join", {"chat_id": chat_id})
    assert await bob.next("user:joined") == {"user_id": "carol", "chat_id": chat_id}
    tab_a, tab_b = await connect(a, "alice"), await connect(b, "alice")
    await tab_a.ok("chat:join", {"chat_id": chat_id})
    await tab_b.ok("chat:join", {"chat_id": chat_id})
    assert await bob.next("user:joined") == {"user_id": "alice", "chat_id": chat_id}
    assert await carol.next("user:joined") == {"user_id": "alice", "chat_id": chat_id}

    before = await connections(a)
    await tab_a.disconnect()
    await wait_for_connections(a, before - 1)
    # bob's typing goes out through Redis after anything node A sent for the close
    await bob.ok("chat:typing", {"chat_id": chat_id, "typing": True})
    await carol.next("chat:typing")
    assert bob.pending("user:left") == carol.pending("user:left") == []
    users = (await carol.ok("chat:join", {"chat_id": chat_id}))["users"]
    assert users == ["alice", "bob", "carol"]

    await tab_b.disconnect()
    assert await bob.next("user:left") == {"user_id": "alice", "chat_id": chat_id}
    assert await carol.next("user:left") == {"user_id": "alice", "chat_id": chat_id}
    await carol.ok("chat:typing", {"chat_id": chat_id, "typing": False})
    await bob.next("chat:typing")
    assert bob.pending("user:left") == carol.pending("user:left") == []  # exactly once


async def test_a_killed_node_is_purged_and_its_users_leave(cluster, a, b, connect):
    c = cluster.add(unique("node-c"))
    bob = await connect(a, "bob")
    chat_id = await shared_chat(bob, "dora", "erin", "frank")
    await bob.ok("chat:join", {"chat_id": chat_id})
    dora = await connect(c, "dora")
    erin_c, erin_b = await connect(c, "erin"), await connect(b, "erin")
    for client in (dora, erin_c, erin_b):
        await client.ok("chat:join", {"chat_id": chat_id})

    c.kill()  # SIGKILL: no goodbye, its connections stay in Redis until purged
    killed = time.monotonic()
    left = await bob.next("user:left", timeout=PURGE_DEADLINE)
    assert left == {"user_id": "dora", "chat_id": chat_id}
    assert time.monotonic() - killed < PURGE_DEADLINE
    # erin still has a tab on node B: present, and not announced as gone
    frank = await connect(b, "frank")
    users = (await frank.ok("chat:join", {"chat_id": chat_id}))["users"]
    assert users == ["bob", "erin", "frank"]
    await erin_b.ok("chat:typing", {"chat_id": chat_id, "typing": True})
    await bob.next("chat:typing")
    assert bob.pending("user:left") == []


async def test_a_node_stopped_cleanly_says_goodbye_at_once(cluster, a, connect):
    c = cluster.add(unique("node-c"))
    bob = await connect(a, "bob")
    chat_id = await shared_chat(bob, "dora")
    await bob.ok("chat:join", {"chat_id": chat_id})
    dora = await connect(c, "dora")
    await dora.ok("chat:join", {"chat_id": chat_id})
    await bob.next("user:joined")

    assert c.terminate() == 0  # SIGTERM: disconnects its clients, leaves the registry
    assert await bob.next("user:left") == {"user_id": "dora", "chat_id": chat_id}
    assert (await bob.ok("chat:join", {"chat_id": chat_id}))["users"] == ["bob"]


async def test_an_update_behind_another_nodes_write_is_a_conflict_with_its_document(
        a, b, connect):
    """Node B's copy stands at the version bob expects, but node A stored one after it:
    B does not read the log first, and the store's compare-and-set refuses the change."""
    alice, bob = await connect(a, "alice"), await connect(b, "bob")
    document_id = await shared_document(alice, "bob")

    async def update(client, version: int, content: str) -> dict:
        return await client.call("documents:update", {"document_id": document_id,
                                                      "content": content, "version": version})

    assert (await update(bob, 1, "bob's"))["ok"] is True  # B's copy: version 1
    by_alice = (await update(alice, 2, "alice's"))["document"]  # A reads the log, stores 2
    error = await bob.fails("documents:update", {"document_id": document_id,
                                                 "content": "stale", "version": 2},
                            "VERSION_CONFLICT")
    assert error["details"] == {"current_version": 2, "document": by_alice}
    again = (await update(bob, 3, "bob's again"))["document"]  # B reads it now
    assert (again["version"], again["content"]) == (3, "bob's again")


async def test_a_downgrade_on_one_node_is_seen_by_the_next_update_on_another(a, b, connect):
    """Nodes tell each other of revocations only, so with other nodes a connection
    keeps no document role between events (collab/permissions.py)."""
    alice, bob = await connect(a, "alice"), await connect(b, "bob")
    document_id = await shared_document(alice, "bob")
    await bob.ok("documents:join", {"document_id": document_id})
    for version in (1, 2):
        await bob.ok("documents:update", {"document_id": document_id, "content": f"v{version}",
                                          "version": version})
    await alice.ok("documents:share", {"document_id": document_id, "user_id": "bob",
                                       "role": "viewer"})
    await bob.fails("documents:update", {"document_id": document_id, "content": "v3",
                                         "version": 3}, "PERMISSION_DENIED")


async def test_a_revoked_user_leaves_the_room_on_every_node(a, b, connect):
    alice, carol = await connect(a, "alice"), await connect(b, "carol")
    bob_tabs = [await connect(a, "bob"), await connect(b, "bob")]
    document_id = await shared_document(alice, "bob", "carol")
    chat_id = await shared_chat(carol, "bob")  # a later broadcast, to know nothing else came
    for client in (alice, carol, *bob_tabs):
        await client.ok("documents:join", {"document_id": document_id})
    for client in (carol, *bob_tabs):
        await client.ok("chat:join", {"chat_id": chat_id})

    await alice.ok("documents:share", {"document_id": document_id, "user_id": "bob",
                                       "role": None})
    for tab in bob_tabs:
        assert await tab.next("error") == {
            "code": "PERMISSION_DENIED",
            "message": f"Access to document {document_id!r} was revoked",
            "details": {"document_id": document_id}}
    left = {"user_id": "bob", "document_id": document_id}
    assert await alice.next("user:left") == left
    assert await carol.next("user:left") == left

    update = {"document_id": document_id, "content": "after", "version": 1}
    stored = (await carol.ok("documents:update", update))["document"]
    assert await alice.next("documents:updated") == {"document": stored, "user_id": "carol"}
    await carol.ok("chat:typing", {"chat_id": chat_id, "typing": True})  # after the update
    for tab in bob_tabs:
        await tab.next("chat:typing")
        assert tab.pending("documents:updated") == []
    assert alice.pending("user:left") == carol.pending("user:left") == []  # once
    users = (await carol.ok("documents:join", {"document_id": document_id}))["users"]
    assert users == ["alice", "carol"]


# -- live documents across nodes ---------------------------------------------------


async def share(owner: Client, document_id: str, **roles: str) -> None:
    for user_id, role in roles.items():
        await owner.ok("documents:share",
                       {"document_id": document_id, "user_id": user_id, "role": role})


async def typist(peer: PycrdtPeer, edits: int, rng: random.Random, letters: str) -> None:
    """Random inserts and deletions as fast as acks come, taking in some of the others'
    changes between them and leaving the rest for later.

    Each typist types its own ``letters`` and deletes only those: two deletions of one
    character would make the second bring nothing new (acked with the current version,
    not stored), and the checks want each ack to be a version of its own.
    """
    for _ in range(edits):
        text = str(peer.text)  # (pycrdt indexes UTF-8 bytes: ASCII here)
        mine = [i for i, char in enumerate(text) if char in letters]
        if mine and rng.random() < 0.3:
            start = rng.choice(mine)
            update = peer.edit(lambda t, s=start: t.__delitem__(slice(s, s + 1)))
        else:
            at = rng.randrange(len(text) + 1)
            update = peer.edit(lambda t, a=at: t.insert(a, rng.choice(letters)))
        await peer.send(update)
        while peer.waiting and rng.random() < 0.7:
            await peer.receive()


async def updated_until(client: Client, version: int) -> list[dict]:
    """A plain member's ``documents:updated`` documents up to ``version``."""
    documents = [(await client.next("documents:updated", timeout=10))["document"]]
    while documents[-1]["version"] < version:
        documents.append((await client.next("documents:updated", timeout=10))["document"])
    return documents


async def test_live_editors_on_two_nodes_converge_and_get_each_change_once_in_order(
        a, b, connect):
    alice = await connect(a, "alice")
    document_id = await shared_document(alice, "bob", "carol")
    await share(alice, document_id, dave="viewer", erin="viewer")
    peers = [PycrdtPeer(alice, document_id), PycrdtPeer(await connect(b, "bob"), document_id),
             PycrdtPeer(await connect(b, "carol"), document_id)]
    for peer in peers:
        await peer.join()
    plain = [await connect(b, "dave"), await connect(a, "erin")]  # v1 members, both nodes
    for client in plain:
        await client.ok("documents:join", {"document_id": document_id})

    rng = random.Random(12)
    await asyncio.gather(*(typist(peer, 60, rng, letters)
                           for peer, letters in zip(peers, ("abc", "xyz", "ijk"), strict=True)))
    heads = [(await client.ok("documents:get", {"document_id": document_id}))["document"]
             for client in (alice, plain[0])]  # the store, asked on node A and node B
    assert heads[0] == heads[1]
    last = heads[0]["version"]
    everything = set(range(1, last + 1))
    # each ack a version of its own: 180 changes, 180 versions, each made once
    assert last == 180
    assert sorted(v for peer in peers for v in peer.acked) == list(range(1, last + 1))
    for peer in peers:  # and delivered once to every other editor, in version order
        others = sorted(everything - set(peer.acked))
        while len(peer.received) < len(others):
            await peer.receive(timeout=10)
        assert peer.received == others, peer.received
    # a last change: the next thing everyone gets (nothing was left over or sent twice)
    marker = await peers[0].send(peers[0].edit(lambda t: t.insert(0, "!")))
    assert marker["version"] == last + 1
    for peer in peers[1:]:
        assert (await peer.receive(timeout=10))["version"] == last + 1
    content = peers[0].content
    assert {peer.content for peer in peers} == {content}

    for client in plain:  # every version, in order, with the content of the last
        documents = await updated_until(client, last + 1)
        assert [d["version"] for d in documents] == list(range(1, last + 2))
        assert documents[-1]["content"] == content
    for node in (a, b):  # the store, and each node's own copy, end the same
        fresh = PycrdtPeer(await connect(node, "alice"), document_id)
        ack = await fresh.join()
        assert (ack["document"]["content"], ack["document"]["version"]) == (content, last + 1)
        assert fresh.content == content
        head = (await fresh.client.ok("documents:get", {"document_id": document_id}))
        assert (head["document"]["content"], head["document"]["version"]) == \
            (content, last + 1)


async def test_editors_joining_on_either_node_mid_edit_converge_and_miss_nothing(
        a, b, connect):
    """Members join, on both nodes, while editors on both nodes type: a live one starts
    from its join's state and version, then gets every later version once, in order;
    a plain one gets, from its ack on, every version above its join's document once, in
    order (each joining node reads the store after entering the room, so what is on its
    way from the other node is in the join's answer too)."""
    alice = await connect(a, "alice")
    document_id = await shared_document(alice, "bob")
    editors = [PycrdtPeer(alice, document_id), PycrdtPeer(await connect(b, "bob"), document_id)]
    for peer in editors:
        await peer.join()
    rng = random.Random(5)
    typing = asyncio.gather(*(typist(peer, 80, rng, letters)
                              for peer, letters in zip(editors, ("abc", "xyz"), strict=True)))
    joiners: list[PycrdtPeer] = []
    joined: list[int] = []  # the version each joiner's ack said
    plain: list[tuple[Client, int, list[dict]]] = []  # v1 members: client, version, early
    for i in range(12):
        await asyncio.sleep(rng.uniform(0, 0.05))
        node = (a, b)[i % 2]
        if i % 3 == 2:
            client = await connect(node, "alice")
            ack = await client.ok("documents:join", {"document_id": document_id})
            # what came before the ack (a lookup that may read a secondary goes first)
            plain.append((client, ack["document"]["version"],
                          client.pending("documents:updated")))
            continue
        peer = PycrdtPeer(await connect(node, "alice"), document_id)
        joined.append((await peer.join())["document"]["version"])
        joiners.append(peer)
    await typing
    last = (await alice.ok("documents:get", {"document_id": document_id}))["document"]
    last = last["version"]
    assert last == 160  # (every change its own version)
    for peer in editors:
        while len(peer.received) + len(peer.acked) < last:
            await peer.receive(timeout=10)
    content = editors[0].content
    for peer, version in zip(joiners, joined, strict=True):
        while (peer.received[-1] if peer.received else version) < last:
            await peer.receive(timeout=10)
        assert peer.received == list(range(version + 1, last + 1)), \
            (version, peer.received[:5])
        assert peer.content == content
    assert any(0 < version < last for version in joined)  # (some did join mid-edit)
    for client, version, early in plain:
        # Before its ack a plain member may get changes its ack's document already holds
        # (on their way from the other node), and changes newer than it (delivered while
        # the join asked the registry who is in the room, after reading the store), as
        # v1 allows: ordered by version, the ones above the ack's are every later
        # version once, in order.
        documents = [u["document"] for u in early if u["document"]["version"] > version]
        newest = documents[-1]["version"] if documents else version
        if newest < last:
            documents += await updated_until(client, last)
        assert [d["version"] for d in documents] == list(range(version + 1, last + 1))
        assert (documents[-1]["content"] if documents else content) == content
    assert editors[1].content == content


def cursor(peer: PycrdtPeer, clock: int, state: str) -> dict:
    return {"document_id": peer.document_id,
            "update": encode_update([Entry(peer.doc.client_id, clock, state)])}


async def next_awareness(client: Client, timeout: float = WAIT) -> list[Entry]:
    return decode_update((await client.next("documents:awareness", timeout))["update"])


async def test_awareness_crosses_nodes_and_so_does_its_removal(a, b, connect):
    alice = await connect(a, "alice")
    document_id = await shared_document(alice, "bob")
    here, there = PycrdtPeer(alice, document_id), PycrdtPeer(await connect(b, "bob"), document_id)
    await here.join()
    await there.join()

    await alice.ok("documents:awareness", cursor(here, 1, '{"cursor":1}'))
    assert await next_awareness(there.client) == [Entry(here.doc.client_id, 1, '{"cursor":1}')]
    await there.client.ok("documents:awareness", cursor(there, 1, '{"cursor":2}'))
    assert await next_awareness(alice) == [Entry(there.doc.client_id, 1, '{"cursor":2}')]
    newcomer = PycrdtPeer(await connect(b, "bob"), document_id)  # node B holds node A's cursors
    states = decode_update((await newcomer.join())["awareness"])
    assert sorted(states, key=lambda e: e.client_id) == sorted(
        [Entry(here.doc.client_id, 1, '{"cursor":1}'),
         Entry(there.doc.client_id, 1, '{"cursor":2}')], key=lambda e: e.client_id)

    await alice.disconnect()  # its cursor goes at once, on the other node too
    gone = [Entry(here.doc.client_id, 1, None)]
    assert await next_awareness(there.client) == gone
    assert await next_awareness(newcomer.client) == gone
    later = PycrdtPeer(await connect(b, "bob"), document_id)
    assert decode_update((await later.join())["awareness"]) == \
        [Entry(there.doc.client_id, 1, '{"cursor":2}')]


async def test_a_nodes_first_live_member_gets_the_cursors_set_on_other_nodes(a, b, connect):
    """Node B held no member of the document while node A's cursors were set, so it heard
    none of them: its first live member's join asks, and node A sends them again."""
    alice = await connect(a, "alice")
    document_id = await shared_document(alice, "bob")
    here, also = PycrdtPeer(alice, document_id), PycrdtPeer(await connect(a, "alice"), document_id)
    for peer in (here, also):
        await peer.join()
    await alice.ok("documents:awareness", cursor(here, 3, '{"cursor":1}'))
    await also.client.next("documents:awareness")  # (node A has taken it)

    first = PycrdtPeer(await connect(b, "bob"), document_id)
    states = decode_update((await first.join())["awareness"])
    if not states:  # node A's answer arrives just after the ack
        states = await next_awareness(first.client)
    assert states == [Entry(here.doc.client_id, 3, '{"cursor":1}')]
    second = PycrdtPeer(await connect(b, "bob"), document_id)  # node B holds it from now on
    assert decode_update((await second.join())["awareness"]) == states
    assert also.client.pending("documents:awareness") == []  # node A's members had it


@pytest.fixture
def providers(io_loop):
    """Real y-websocket providers (yjs in Node), closed afterwards."""
    started = io_loop.run_sync(YjsProviders.start)
    yield started
    io_loop.run_sync(started.close)


async def test_a_y_websocket_first_member_of_a_node_gets_the_other_nodes_cursors(
        a, b, connect, providers):
    alice = await connect(a, "alice")
    document_id = await shared_document(alice, "bob")
    here = PycrdtPeer(alice, document_id)
    await here.join()
    await alice.ok("documents:awareness", {"document_id": document_id, "update":
                                           encode_update([Entry(4242, 1, '{"user":"a"}')])})
    bob_id = await providers.open("bob", b.url, document_id, token=make_token("bob"),
                                  state={"user": "b"})
    seen = await providers.until("bob", "awareness", lambda e: "4242" in e["states"])
    assert seen["states"]["4242"] == {"user": "a"}
    got = await next_awareness(alice)  # and the provider's own state crosses the other way
    assert [e.client_id for e in got] == [bob_id]


async def test_a_newcomer_sees_every_cursor_a_busy_node_relays(a, b, connect):
    """More live members on one node than one connection may hold client ids: the other
    node keeps every one of their states for its newcomers."""
    owner = await connect(a, "alice")
    document_id = await shared_document(owner)
    watcher = PycrdtPeer(await connect(b, "alice"), document_id)
    await watcher.join()
    count = MAX_IDS_PER_CONNECTION + 2
    members = [PycrdtPeer(await connect(a, "alice"), document_id) for _ in range(count)]
    for member in members:
        await member.join()
        await member.client.ok("documents:awareness", cursor(member, 1, "{}"))
        assert await next_awareness(watcher.client) == [Entry(member.doc.client_id, 1, "{}")]
    newcomer = PycrdtPeer(await connect(b, "alice"), document_id)
    states = decode_update((await newcomer.join())["awareness"])
    assert sorted(e.client_id for e in states) == sorted(m.doc.client_id for m in members)


async def test_a_member_on_another_node_cannot_take_over_a_cursor(a, b, connect):
    """Node B learns whose alice's cursor is from node A (here from its answer to B's
    ask, since B had no member when she set it): bob's entries for her client id, a
    newer state and a null, are not taken on node B and never reach node A."""
    alice = await connect(a, "alice")
    document_id = await shared_document(alice, "bob")
    here = PycrdtPeer(alice, document_id)
    await here.join()
    mine = '{"name":"alice"}'
    await alice.ok("documents:awareness", cursor(here, 1, mine))
    bob = PycrdtPeer(await connect(b, "bob"), document_id)
    states = decode_update((await bob.join())["awareness"])
    if not states:  # node A's answer arrives just after the ack
        states = await next_awareness(bob.client)
    assert states == [Entry(here.doc.client_id, 1, mine)]
    for entry in (Entry(here.doc.client_id, 7, '{"name":"bob"}'),
                  Entry(here.doc.client_id, 1, None)):
        await bob.client.ok("documents:awareness", {
            "document_id": document_id, "update": encode_update([entry])})
    await bob.client.ok("documents:awareness", cursor(bob, 1, '{"name":"bob"}'))
    assert await next_awareness(alice) == [Entry(bob.doc.client_id, 1, '{"name":"bob"}')]
    expected = sorted([Entry(here.doc.client_id, 1, mine),
                       Entry(bob.doc.client_id, 1, '{"name":"bob"}')], key=lambda e: e.client_id)
    for node in (a, b):
        late = PycrdtPeer(await connect(node, "bob"), document_id)
        joined = decode_update((await late.join())["awareness"])
        assert sorted(joined, key=lambda e: e.client_id) == expected, node


async def test_a_killed_nodes_cursors_expire_on_the_others(cluster, a, connect):
    """Node C dies (SIGKILL): nobody sends the removal of its members' cursors, so node D
    removes them once they are not renewed within awareness_timeout (shortened here),
    long before the registry purges node C, and keeps the renewed ones."""
    timeout = 2.0
    d = cluster.add(unique("node-d"), {"COLLAB_AWARENESS_TIMEOUT": str(timeout)})
    c = cluster.add(unique("node-c"))
    renewing: list[asyncio.Future] = []
    try:
        alice = await connect(d, "alice")
        document_id = await shared_document(alice, "carol", "erin")
        await share(alice, document_id, bob="viewer")
        watcher = PycrdtPeer(alice, document_id)  # on node D
        erin = PycrdtPeer(await connect(a, "erin"), document_id)  # on node A: it lives on
        carol = PycrdtPeer(await connect(c, "carol"), document_id)  # on node C: it dies
        for peer in (watcher, erin, carol):
            await peer.join()

        async def renew(peer: PycrdtPeer) -> None:  # as y-protocols clients do, more often
            for clock in range(1, 10_000):
                await peer.client.ok("documents:awareness", cursor(peer, clock, "{}"))
                await asyncio.sleep(timeout / 5)

        renewing[:] = [asyncio.ensure_future(renew(p)) for p in (watcher, erin)]
        await carol.client.ok("documents:awareness", cursor(carol, 1, '{"at":1}'))
        announced = time.monotonic()
        ids = {p.doc.client_id for p in (watcher, erin, carol)}
        seen = PycrdtPeer(await connect(d, "bob"), document_id)  # node D holds all three
        assert {e.client_id for e in decode_update((await seen.join())["awareness"])} == ids

        c.kill()
        removal = [Entry(carol.doc.client_id, 1, None)]
        deadline, renewals = time.monotonic() + timeout * 5, []
        while (got := await next_awareness(seen.client, timeout=timeout + 5)) != removal:
            assert all(e.state is not None for e in got), got  # (the others' renewals)
            renewals.append(got)
            assert time.monotonic() < deadline, (
                f"no removal of carol's cursor after {len(renewals)} renewals, the last "
                f"{renewals[-3:]}; node D's log:\n{d.log_tail(lines=60)}")
        assert time.monotonic() - announced >= timeout * 0.9
        assert time.monotonic() - announced < PURGE_DEADLINE / 3  # not the registry's purge
        newcomer = PycrdtPeer(await connect(d, "bob"), document_id)
        states = decode_update((await newcomer.join())["awareness"])
        assert {e.client_id for e in states} == ids - {carol.doc.client_id}
    finally:
        for task in renewing:
            task.cancel()
        await asyncio.gather(*renewing, return_exceptions=True)
        cluster.remove(d)
        cluster.nodes.remove(c)


# -- ordered delivery, in process ------------------------------------------------
# Another node's broadcasts arrive on the Redis channel; these tests put them there
# themselves, out of order, to see each node deliver them in order.


@pytest.fixture(params=list(BACKENDS))
def redis_url(request):
    """The in-process nodes' Redis: a single one, or a cluster."""
    return request.getfixturevalue(
        "redis_url" if request.param == "redis" else "redis_cluster_url")


@pytest.fixture
def node(io_loop, redis_url):
    """An in-process node on the session Redis (and its own SQLite store)."""
    settings = make_settings(registry_url=redis_url, node_id=unique("node"))
    yield from running_server(io_loop, settings)


@pytest.fixture
def other(io_loop, redis_url):
    other = OtherNode(redis_url)
    yield other
    io_loop.run_sync(other.close)


async def test_broadcasts_are_delivered_in_seq_order(node, other):
    alice = await node.connect("alice")
    chat_id = await shared_chat(alice)
    await alice.ok("chat:join", {"chat_id": chat_id})  # the chat is at seq 0

    await other.chat_message(chat_id, 2)
    await other.chat_message(chat_id, 1)
    assert [(await alice.next("chat:message"))["message"]["seq"] for _ in range(2)] == [1, 2]

    # seq 3 never comes (its node died after storing it): 4 is delivered after a while
    start = time.monotonic()
    await other.chat_message(chat_id, 4)
    assert (await alice.next("chat:message"))["message"]["seq"] == 4
    assert time.monotonic() - start >= GAP_TIMEOUT * 0.9
    await other.chat_message(chat_id, 3)  # late after all: delivered, not dropped
    assert (await alice.next("chat:message"))["message"]["seq"] == 3


async def test_document_updates_are_delivered_in_version_order(node, other):
    alice = await node.connect("alice")
    document_id = await shared_document(alice)
    await alice.ok("documents:join", {"document_id": document_id})  # version 0
    for version in (3, 1, 2):
        document = {"id": document_id, "title": "", "content": str(version),
                    "version": version, "created_by": "alice", "created_at": "",
                    "updated_by": "zoe", "updated_at": ""}
        await other.emit("documents:updated", {"document": document, "user_id": "zoe"},
                         f"document_{document_id}", version)
    got = [(await alice.next("documents:updated"))["document"]["version"] for _ in range(3)]
    assert got == [1, 2, 3]


async def test_a_live_change_whose_broadcast_never_came_is_sent_from_the_store(node, other):
    """Version 1's node died between storing it and publishing it: the live member here
    gets it from the store once the gap is given up on, before version 2 (which builds
    on it: without it, a Yjs client could not apply what follows)."""
    alice = await node.connect("alice")
    document_id = await shared_document(alice)
    peer = PycrdtPeer(alice, document_id)
    await peer.join()
    elsewhere = LiveDocuments(node.app.raw_store, node.app.settings, lambda _: True)

    async def unpublished(change) -> None:  # noqa: ANN001 - (published by hand below)
        return None

    changes = [await elsewhere.change(document_id, lambda d, c=c: d.replace_content(c),
                                      "zoe", announce=unpublished)
               for c in ("a", "ab", "abc")]
    for change in changes[1:]:  # version 1's broadcast never comes
        await other.emit("documents:yupdate", {
            "document_id": document_id, "update": change.update,
            "version": change.version, "user_id": "zoe"},
            f"document_{document_id}#live", change.version)
    got = [await peer.receive(timeout=GAP_TIMEOUT + WAIT) for _ in range(3)]
    assert [(g["version"], g["user_id"]) for g in got] == [(1, "zoe"), (2, "zoe"), (3, "zoe")]
    assert peer.content == "abc"
    assert node.app.documents.peek(document_id).version == 3


async def test_a_rooms_order_is_forgotten_when_its_last_local_client_disconnects(node):
    alice, bob = await node.connect("alice"), await node.connect("bob")
    chat_id = await shared_chat(alice, "bob")
    for client in (alice, bob):
        await client.ok("chat:join", {"chat_id": chat_id})
    orders = node.app.broadcaster.holdback.rooms
    assert f"chat_{chat_id}" in orders
    await node.app.sio.disconnect(alice.sio.get_sid())  # returns once the server forgot alice
    assert f"chat_{chat_id}" in orders  # bob is still in the room
    await node.app.sio.disconnect(bob.sio.get_sid())
    assert f"chat_{chat_id}" not in orders


# -- Redis outage ----------------------------------------------------------------


@pytest.fixture(params=list(BACKENDS))
def outage_cluster(request, tmp_path, mongodb_url):
    """A cluster of its own: its Redis is stopped and started again."""
    if BACKENDS[request.param](tmp_path).external:
        pytest.skip("an external Redis is configured: cannot stop it")
    cluster = make_cluster(tmp_path, mongodb_url, ["node-a", "node-b"], request.param)
    yield cluster
    cluster.stop()
    cluster.redis.stop()


async def refused(node: CollabProcess, user_id: str):
    sio = socketio.AsyncClient(reconnection=False)
    errors: asyncio.Queue = asyncio.Queue()
    sio.on("connect_error", errors.put_nowait)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await sio.connect(node.url, auth={"token": make_token(user_id)},
                          transports=["websocket"], wait_timeout=WAIT)
    return await asyncio.wait_for(errors.get(), WAIT)


async def whole_history(client: Client, chat_id: str) -> list[dict]:
    """Every message of the chat, oldest first, paging back through ``chat:history``."""
    messages: list[dict] = []
    page = await client.ok("chat:history", {"chat_id": chat_id, "limit": 200})
    messages[:0] = page["messages"]
    while page["has_more"]:
        before = page["messages"][0]["seq"]
        page = await client.ok("chat:history",
                               {"chat_id": chat_id, "limit": 200, "before_seq": before})
        messages[:0] = page["messages"]
    return messages


async def broadcasts_cross_again(sender: Client, receiver: Client, chat_id: str) -> None:
    """Post until one of ``sender``'s messages reaches ``receiver`` on the other node
    (within 15 s): Redis carries broadcasts again."""
    deadline = time.monotonic() + 15
    while True:
        sent = await sender.ok("chat:message", {"chat_id": chat_id, "content": "back"})
        try:
            while (await receiver.next("chat:message", timeout=1))["message"] != sent["message"]:
                pass
            return
        except asyncio.TimeoutError:
            assert time.monotonic() < deadline, "no broadcast crossed the nodes within 15 s"


async def test_redis_outage_under_load(outage_cluster, connect):
    a, b = outage_cluster.nodes
    alice, bob = await connect(a, "alice"), await connect(b, "bob")
    carol = await connect(b, "carol")
    chat_id = await shared_chat(alice, "bob", "carol")
    await alice.ok("chat:join", {"chat_id": chat_id})
    await bob.ok("chat:join", {"chat_id": chat_id})

    acked: list[dict] = []
    failed: list[dict] = []
    stop_load = asyncio.Event()
    answered = asyncio.Event()

    async def load(client: Client) -> None:
        while not stop_load.is_set():
            payload = {"chat_id": chat_id, "content": unique("m"), "client_id": unique("c")}
            ack = await client.call("chat:message", payload, timeout=10)
            (acked if ack["ok"] else failed).append(ack)
            answered.set()
            await asyncio.sleep(0.02)  # a steady stream, not a flood

    async def until_acked(count: int) -> None:
        while len(acked) < count:
            assert failed == []  # as at the end: a message is never refused
            answered.clear()
            await asyncio.wait_for(answered.wait(), 10)

    loaders = [asyncio.ensure_future(load(alice)), asyncio.ensure_future(load(bob))]
    try:
        await until_acked(10)

        outage_cluster.redis.stop()
        during = len(acked)
        for node in (a, b):
            response = await get(node, "/readyz")
            assert response.code == 503
            assert json.loads(response.body)["failed"] == ["registry"]
        assert (await refused(a, "dave"))["data"]["code"] == "UNAVAILABLE"
        await carol.fails("chat:join", {"chat_id": chat_id}, "UNAVAILABLE")
        await until_acked(during + 10)  # messages are still stored and acked

        outage_cluster.redis.start()  # a fresh Redis: it has no data
        deadline = time.monotonic() + 15
        while True:  # presence comes back once the nodes have re-registered
            ack = await carol.call("chat:join", {"chat_id": chat_id})
            if ack["ok"] and ack["users"] == ["alice", "bob", "carol"]:
                break
            assert time.monotonic() < deadline, ack
            await asyncio.sleep(0.2)
        for node in (a, b):
            assert (await get(node, "/readyz")).code == 200
    finally:
        stop_load.set()
        await asyncio.gather(*loaders)

    assert failed == []
    history = await whole_history(alice, chat_id)  # more than one page on a fast machine
    stored = {m["id"]: m for m in history}
    assert [m["seq"] for m in history] == list(range(1, len(stored) + 1))
    for ack in acked:
        assert stored[ack["message"]["id"]] == ack["message"]

    await broadcasts_cross_again(alice, bob, chat_id)  # after the outage


async def test_a_hung_redis_delays_neither_broadcasts_nor_refusals(outage_cluster, connect):
    a, b = outage_cluster.nodes
    alice, erin, dave = [await connect(a, user) for user in ("alice", "erin", "dave")]
    bob = await connect(b, "bob")
    chat_id = await shared_chat(alice, "bob", "erin", "dave")
    for client in (alice, erin, bob):
        await client.ok("chat:join", {"chat_id": chat_id})
    document_id = await shared_document(alice, "bob")
    await bob.ok("documents:join", {"document_id": document_id})

    outage_cluster.redis.pause()  # it hangs (a partition, a stopped process): nothing refuses
    try:
        start = time.monotonic()
        acks = await asyncio.gather(*(
            sender.call("chat:message", {"chat_id": chat_id, "content": f"{i}"}, timeout=10)
            for i, sender in enumerate([alice, erin] * 4)))
        took = time.monotonic() - start
        assert all(ack["ok"] for ack in acks), acks
        assert sorted(ack["message"]["seq"] for ack in acks) == list(range(1, 9))
        assert took < 3.0, f"eight messages took {took:.1f} s"
        for client in (alice, erin):  # this node's members, in seq order
            got = [(await client.next("chat:message"))["message"]["seq"] for _ in range(8)]
            assert got == list(range(1, 9))

        start = time.monotonic()
        await dave.fails("chat:join", {"chat_id": chat_id}, "UNAVAILABLE")
        assert time.monotonic() - start < 2.5
        # a revocation that node B would not hear of is refused (the owner retries)
        revoke = {"document_id": document_id, "user_id": "bob", "role": None}
        start = time.monotonic()
        await alice.fails("documents:share", revoke, "UNAVAILABLE")
        assert time.monotonic() - start < 2.5
    finally:
        outage_cluster.redis.resume()

    await broadcasts_cross_again(alice, bob, chat_id)  # publishing resumed after the hang
    await alice.ok("documents:share", revoke)
    assert (await bob.next("error"))["code"] == "PERMISSION_DENIED"


async def test_a_user_who_left_while_redis_was_down_is_announced_when_it_returns_empty(
        outage_cluster, connect):
    a, b = outage_cluster.nodes
    alice, bob = await connect(a, "alice"), await connect(a, "bob")
    carol = await connect(b, "carol")
    chat_id = await shared_chat(alice, "bob", "carol")
    for client in (alice, bob, carol):
        await client.ok("chat:join", {"chat_id": chat_id})

    outage_cluster.redis.stop()
    await bob.disconnect()
    deadline = time.monotonic() + 10  # no event says that node A tried to remove bob
    while "registry unavailable while removing" not in a.output():
        assert time.monotonic() < deadline, a.output()
        await asyncio.sleep(0.05)
    outage_cluster.redis.start()  # a fresh Redis: nobody there remembers bob

    left = {"user_id": "bob", "chat_id": chat_id}
    assert await alice.next("user:left", timeout=PURGE_DEADLINE) == left
    assert await carol.next("user:left", timeout=PURGE_DEADLINE) == left
    ack = await carol.ok("chat:join", {"chat_id": chat_id})
    assert ack["users"] == ["alice", "carol"]


async def test_a_revocation_redis_did_not_take_still_reaches_the_other_node(outage_cluster,
                                                                            connect):
    """Redis down: the owner's revocation is stored but cannot be published (UNAVAILABLE).
    Once Redis is back, the revoked user's connection on the other node is taken out (the
    node checks its rooms when it gets the channel back), before it sees another update."""
    a, b = outage_cluster.nodes
    alice = await connect(a, "alice")
    bob, carol = await connect(b, "bob"), await connect(b, "carol")
    document_id = await shared_document(alice, "bob", "carol")
    for client in (bob, carol):
        await client.ok("documents:join", {"document_id": document_id})

    outage_cluster.redis.stop()
    try:
        revoke = {"document_id": document_id, "user_id": "bob", "role": None}
        await alice.fails("documents:share", revoke, "UNAVAILABLE")
    finally:
        outage_cluster.redis.start()
    error = await bob.next("error", timeout=30)
    assert error["code"] == "PERMISSION_DENIED", error
    assert error["details"] == {"document_id": document_id}

    await broadcasts_cross_again_for(alice, carol, document_id)
    assert bob.pending("documents:updated") == []  # carol got them; bob is out


async def broadcasts_cross_again_for(owner: Client, watcher: Client, document_id: str) -> None:
    """Update the document until an update reaches ``watcher`` on the other node."""
    deadline = time.monotonic() + 15
    version = (await owner.ok("documents:join", {"document_id": document_id}))["document"]
    version = version["version"]
    while True:
        version += 1
        await owner.ok("documents:update",
                       {"document_id": document_id, "content": f"v{version}",
                        "version": version})
        try:
            got = await watcher.next("documents:updated", timeout=1)
            while got["document"]["version"] != version:
                got = await watcher.next("documents:updated", timeout=1)
            return
        except asyncio.TimeoutError:
            assert time.monotonic() < deadline, "no update crossed the nodes within 15 s"


async def test_a_dropped_subscriber_connection_is_noticed_and_access_checked(node, redis_url):
    """Redis drops the node's subscriber connection (an output-buffer limit, CLIENT KILL, a
    proxy reset): what was published meanwhile is lost, so the node must notice (not let
    redis-py reconnect silently) and check access in its rooms once subscribed again."""
    membership = node.app.membership
    checked = asyncio.Event()
    recheck = membership.recheck_access

    async def counting() -> None:
        await recheck()
        checked.set()

    membership.recheck_access = counting
    killed = 0
    for seed in RedisTarget.parse(redis_url).seeds:  # every master of a cluster
        client = aioredis.Redis(host=seed[0], port=seed[1])
        try:
            killed += await client.client_kill_filter(_type="pubsub")
        finally:
            await client.aclose()
    assert killed >= 1
    await asyncio.wait_for(checked.wait(), 10)
