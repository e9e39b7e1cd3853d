"""A real server on a free port and real python-socketio clients, for protocol tests."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import jwt
import pycrdt
import pytest
import socketio
from redis.asyncio.cluster import RedisCluster
from tornado.httpclient import AsyncHTTPClient

from collab.broadcast.wire import EMIT, Envelope, channel_for
from collab.config import Settings, build_settings
from collab.packet import CollabPacket
from collab.redisconn import RedisTarget, open_client
from collab.server import Server

SECRET = "test-secret-0123456789abcdef-0123456789"
WAIT = 5.0


def make_settings(**overrides: Any) -> Settings:
    """Validated, frozen settings for an in-process server: defaults (no environment, no
    file), a free port, an in-memory store and registry, then ``overrides``."""
    return build_settings({
        "host": "127.0.0.1", "port": 0, "jwt_secret": SECRET,
        "storage_url": "sqlite://:memory:", "registry_url": "memory://", **overrides,
    })


def make_token(user_id: str | None = "alice", ttl: float = 3600, key: str = SECRET,
               algorithm: str = "HS256", **claims: Any) -> str:
    body: dict[str, Any] = {"exp": int(time.time() + ttl)}
    if user_id is not None:
        body["sub"] = user_id
    body.update(claims)
    return jwt.encode(body, key, algorithm=algorithm)


def leftovers(app: Any) -> dict[str, int]:
    """What the server holds for connections, place by place; all 0 with nobody connected.

    Beside our own tables, python-socketio's (the manager's rooms, which include
    every sid's own room and pending connects, its ack callbacks, the handshake
    environ, half-received binary packets) and Engine.IO's sockets.
    """
    sio = app.sio
    manager = sio.manager
    return {
        "connections": len(app.connections),
        "users": len(app.user_limits),
        "registry": app.registry.connection_count(),
        "sio rooms": sum(len(room) for rooms in manager.rooms.values() for room in rooms.values()),
        "sio pending connects": sum(map(len, manager.pending_connect.values())),
        "sio pending disconnects": sum(map(len, manager.pending_disconnect.values())),
        "sio callbacks": len(manager.callbacks),
        "sio environ": len(sio.environ),
        "sio binary packets": len(sio._binary_packet),
        "eio sockets": len(sio.eio.sockets),
    }


async def settled(app: Any, like: dict[str, int] | None = None,
                  timeout: float = WAIT) -> dict[str, int]:
    """The non-zero :func:`leftovers` once they are ``like`` (nothing by default), or as
    they stand when ``timeout`` runs out.

    Engine.IO drops a socket only after its transport has ended, a little after
    the client left, and signals nothing when it does: this polls.
    """
    like = like or {}
    deadline = time.monotonic() + timeout
    while True:
        left = {place: n for place, n in leftovers(app).items() if n}
        if left == like or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.01)


async def scrape(url: str) -> dict[str, float]:
    """``GET url/metrics`` (no token): each sample line's series -> its value."""
    response = await AsyncHTTPClient().fetch(url + "/metrics")
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in response.body.decode().splitlines() if line and not line.startswith("#")
    }


async def scraped(url: str, series: str, value: float, timeout: float = WAIT) -> float:
    """The value of ``series`` once /metrics shows ``value``, or as it stands at ``timeout``
    (for what the server does a little after the event a test can see, like a disconnect)."""
    deadline = time.monotonic() + timeout
    while True:
        got = (await scrape(url)).get(series)
        if got == value or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.01)


class Client:
    """An AsyncClient that records every server event for the test to await."""

    def __init__(self, sio: socketio.AsyncClient) -> None:
        self.sio = sio
        self.queues: dict[str, asyncio.Queue] = defaultdict(asyncio.Queue)
        sio.on("*", self._record)

    async def _record(self, event: str, *args: Any) -> None:
        self.queues[event].put_nowait(args[0] if len(args) == 1 else list(args))

    @property
    def sid(self) -> str:
        return self.sio.get_sid()

    async def call(self, event: str, data: Any = None, timeout: float = WAIT) -> dict[str, Any]:
        if data is None:
            return await self.sio.call(event, timeout=timeout)
        return await self.sio.call(event, data, timeout=timeout)

    async def ok(self, event: str, data: Any = None) -> dict[str, Any]:
        """Call and assert success; returns the ack."""
        ack = await self.call(event, data)
        assert ack.get("ok") is True, ack
        return ack

    async def fails(self, event: str, data: Any, code: str) -> dict[str, Any]:
        """Call, assert a failure ack with ``code`` and the matching ``error`` event."""
        ack = await self.call(event, data)
        assert ack["ok"] is False, ack
        assert ack["error"]["code"] == code, ack
        assert isinstance(ack["error"]["message"], str) and ack["error"]["message"]
        error = await self.next("error")
        assert error == ack["error"]
        return ack["error"]

    async def next(self, event: str, timeout: float = WAIT) -> Any:
        return await asyncio.wait_for(self.queues[event].get(), timeout)

    def pending(self, event: str) -> list[Any]:
        """Events already received and not consumed (does not wait)."""
        queue = self.queues[event]
        items = []
        while not queue.empty():
            items.append(queue.get_nowait())
        return items

    async def disconnect(self) -> None:
        await self.sio.disconnect()


class Harness:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.url = f"http://127.0.0.1:{server.port}"
        self.clients: list[Client] = []

    @property
    def app(self):
        return self.server.app

    async def connect(self, user_id: str = "alice", *, token: str | None = None,
                      transports: list[str] | None = None, headers: dict | None = None,
                      auth: Any = ..., **claims: Any) -> Client:
        sio = socketio.AsyncClient(reconnection=False)
        client = Client(sio)
        if auth is ...:
            auth = {"token": token or make_token(user_id, **claims)}
        await sio.connect(self.url, auth=auth, headers=headers or {},
                          transports=transports or ["websocket"], wait_timeout=WAIT)
        self.clients.append(client)
        return client

    async def refused(self, **kwargs: Any) -> Any:
        """Connect expecting refusal; returns the ``connect_error`` data."""
        sio = socketio.AsyncClient(reconnection=False)
        errors: asyncio.Queue = asyncio.Queue()
        sio.on("connect_error", lambda data: errors.put_nowait(data))
        auth = kwargs.pop("auth", None)
        try:
            await sio.connect(self.url, auth=auth, wait_timeout=WAIT,
                              transports=kwargs.pop("transports", ["websocket"]), **kwargs)
        except socketio.exceptions.ConnectionError:
            pass
        else:
            await sio.disconnect()
            raise AssertionError("connection was accepted")
        return errors.get_nowait() if not errors.empty() else None

    async def close_clients(self) -> None:
        for client in self.clients:
            if client.sio.connected:
                await client.sio.disconnect()


class Peer:
    """A live member: a pycrdt document kept in sync over a Socket.IO client."""

    def __init__(self, client: Client, document_id: str) -> None:
        self.client = client
        self.document_id = document_id
        self.doc = pycrdt.Doc()
        self.text = self.doc.get("content", type=pycrdt.Text)
        self.version = 0
        #: the versions this peer has: its own (acked) and the others' (received)
        self.seen: set[int] = set()
        #: the versions of the others' changes, as they arrived
        self.received: list[int] = []
        #: every ack's version (an update that brought nothing new: the current one)
        self.acked: list[int] = []

    async def join(self) -> dict:
        ack = await self.client.ok("documents:join", {"document_id": self.document_id,
                                                      "state_vector": self.doc.get_state()})
        self.doc.apply_update(ack["update"])
        self.version = ack["document"]["version"]
        missing = self.doc.get_update(ack["state_vector"])
        if missing != b"\x00\x00":  # what the server lacks (offline edits)
            await self.send(missing)
        return ack

    async def send(self, update: bytes) -> dict:
        ack = await self.client.ok("documents:yupdate",
                                   {"document_id": self.document_id, "update": update})
        self.version = max(self.version, ack["version"])
        self.seen.add(ack["version"])
        self.acked.append(ack["version"])
        return ack

    def edit(self, change) -> bytes:  # noqa: ANN001
        """Apply ``change(text)`` locally; the Yjs update it made."""
        before = self.doc.get_state()
        change(self.text)
        return self.doc.get_update(before)

    async def receive(self, timeout: float = WAIT) -> dict:
        got = await self.client.next("documents:yupdate", timeout)
        self.doc.apply_update(got["update"])
        self.version = max(self.version, got["version"])
        self.seen.add(got["version"])
        self.received.append(got["version"])
        return got

    @property
    def waiting(self) -> bool:
        """Whether an update from the room has arrived and was not applied yet."""
        return not self.client.queues["documents:yupdate"].empty()

    @property
    def content(self) -> str:
        return str(self.text)


def redis_client(url: str) -> Any:
    """A client for the Redis (or Redis Cluster) at ``url``, as collab opens them."""
    return open_client(RedisTarget.parse(url))


async def publish(client: Any, channel: str, data: bytes) -> None:
    """Publish as collab's broadcasters do: sharded on a cluster, plain otherwise."""
    if isinstance(client, RedisCluster):
        await client.spublish(channel, data)
    else:
        await client.publish(channel, data)


async def channel_subscribers(url: str, channel: str) -> int:
    """How many connections Redis has subscribed to ``channel`` (on a cluster: the shard
    that owns its slot, where sharded subscriptions live)."""
    client = redis_client(url)
    try:
        if isinstance(client, RedisCluster):
            await client.initialize()
            # asked of the shard that owns the slot (redis-py would pick a random node)
            reply = await client.execute_command(
                "PUBSUB SHARDNUMSUB", channel, target_nodes=client.get_node_from_key(channel))
            [(_, count)] = reply
        else:
            [(_, count)] = await client.pubsub_numsub(channel)
        return count
    finally:
        await client.aclose()


class OtherNode:
    """Publishes on a room's channel as a node that is not there."""

    def __init__(self, url: str) -> None:
        self.redis = redis_client(url)

    async def emit(self, event: str, data: Any, room: str, position: int | None = None) -> None:
        """Broadcast ``event`` to ``room`` as a node would (``position``: a stored item's)."""
        encoded = CollabPacket(socketio.packet.EVENT, namespace="/", data=[event, data]).encode()
        packet, *attachments = encoded if isinstance(encoded, list) else [encoded]
        envelope = Envelope("other-node", EMIT, room, position, (), event, packet,
                            tuple(attachments))
        await publish(self.redis, channel_for(room), envelope.encode())

    async def chat_message(self, chat_id: str, seq: int) -> None:
        message = {"id": f"m{seq}", "chat_id": chat_id, "seq": seq, "user_id": "zoe",
                   "content": str(seq), "created_at": "2026-01-01T00:00:00.000Z"}
        await self.emit("chat:message", {"message": message}, f"chat_{chat_id}", seq)

    async def close(self) -> None:
        await self.redis.aclose()


JS_DIR = Path(__file__).parent / "js"


def node_or_skip(package: str) -> str:
    """The ``node`` binary, once ``tests/js/node_modules/<package>`` is installed.

    Without them the test fails in CI (CI=true) and is skipped elsewhere.
    """
    node = shutil.which("node")
    missing = None
    if node is None:
        missing = "node is not installed"
    elif not (JS_DIR / "node_modules" / package).is_dir():
        missing = "tests/js/node_modules is missing: run `npm ci --prefix tests/js`"
    if missing is None:
        return node
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"JavaScript interop cannot run in CI: {missing}")
    pytest.skip(missing)


class YjsPeer:
    """Real ``yjs`` and ``y-protocols`` in a Node process (tests/js/yjs_peer.mjs).

    ``call(op, **fields)`` sends one request and returns its answer; ``bytes`` fields go
    as base64 and the answer's ``update`` / ``state_vector`` come back as ``bytes``.
    Synchronous: the tests that use it have no event loop to keep serving.
    """

    def __init__(self) -> None:
        node = node_or_skip("yjs")
        self.proc = subprocess.Popen(
            [node, str(JS_DIR / "yjs_peer.mjs")], cwd=JS_DIR, text=True, encoding="utf-8",
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        request = {"op": op}
        for key, value in fields.items():
            request[key] = base64.b64encode(value).decode() if isinstance(value, bytes) else value
        # ensure_ascii: lone surrogates travel as \uXXXX escapes, which JSON.parse keeps
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"yjs_peer.mjs exited ({self.proc.poll()})"
        answer = json.loads(line)
        assert answer.pop("ok") is True, answer.get("error")
        for key in ("update", "state_vector"):
            if isinstance(answer.get(key), str):
                answer[key] = base64.b64decode(answer[key])
        return answer

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(10)
