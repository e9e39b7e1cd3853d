"""A real server on a free port and real python-socketio clients, for protocol tests."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import jwt
import pycrdt
import pytest
import socketio
from redis.asyncio.cluster import RedisCluster
from services import ServiceProcess
from tornado.httpclient import AsyncHTTPClient

from collab.broadcast.wire import EMIT, Envelope, channel_for
from collab.client import SocketManager
from collab.config import Settings, build_settings
from collab.lib0 import var_string, var_uint
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
        "sio pipelined events": len(sio.pipelined_running()),
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


class PycrdtPeer:
    """A live member in Python: a pycrdt document kept in sync over a :class:`Client`."""

    def __init__(self, client: Client, document_id: str) -> None:
        self.client = client
        self.document_id = document_id
        self.doc = pycrdt.Doc()
        self.text = self.doc.get("content", type=pycrdt.Text)
        self.version = 0
        #: the versions this peer has: its own (acked) and the others' (received). An
        #: update that brought nothing new is acked with the current version, maybe
        #: another's not received yet: where that can happen, wait on ``received``
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


async def versions_by_user(client: Client, document_id: str) -> dict[int, str]:
    """Who made each version of the document, from ``documents:history`` page by page."""
    made: dict[int, str] = {}
    before: int | None = None
    while True:
        page = await client.ok("documents:history", {
            "document_id": document_id, "limit": 200,
            **({"before_version": before} if before is not None else {})})
        made.update((entry["version"], entry["user_id"]) for entry in page["versions"])
        if not page["has_more"] or not page["versions"]:
            return made
        before = page["versions"][0]["version"]


# -- Yjs updates written by hand: what a hostile client can send ----------------------

#: a Yjs update deleting item (1, 0): the first of :func:`nested_arrays` (client 1)
DELETE_FIRST = bytes([0, 1, 1, 1, 0, 1])


def y_item(*, parent: str | tuple[int, int] | None = None,
           origin: tuple[int, int] | None = None,
           right_origin: tuple[int, int] | None = None, text: str | None = None) -> bytes:
    """One item as Yjs writes it (update format v1): a ``Y.Array``, or the string
    ``text``. Its parent is written out (a root type's name or a type item's id) unless
    an origin or a right origin says where it goes."""
    info = 0x04 if text is not None else 0x07
    out = bytearray()
    if origin is not None:
        info |= 0x80
        out += var_uint(origin[0]) + var_uint(origin[1])
    if right_origin is not None:
        info |= 0x40
        out += var_uint(right_origin[0]) + var_uint(right_origin[1])
    if origin is None and right_origin is None:
        assert parent is not None, "an item without origins needs its parent written out"
        if isinstance(parent, str):
            out += b"\x01" + var_string(parent)
        else:
            out += b"\x00" + var_uint(parent[0]) + var_uint(parent[1])
    out += var_string(text) if text is not None else b"\x00"  # (type ref 0: YArray)
    return bytes([info]) + bytes(out)


def y_update(client: int, clock: int, items: list[bytes]) -> bytes:
    """An update of ``items`` (one clock each: types, one-unit strings) of ``client``
    from ``clock``, with an empty delete set."""
    return (b"\x01" + var_uint(len(items)) + var_uint(client) + var_uint(clock)
            + b"".join(items) + b"\x00")


def nested_arrays(count: int, client: int = 1, clock: int = 0,
                  parent: str | tuple[int, int] = "chain") -> bytes:
    """One update of ``count`` ``Y.Array`` items of ``client`` from ``clock``, each
    inside the one before; the first inside ``parent`` (a root name or an item id)."""
    return y_update(client, clock, [
        y_item(parent=parent if k == 0 else (client, clock + k - 1)) for k in range(count)])


def unique(prefix: str) -> str:
    """A name no other test uses (node ids, Redis keys shared by a session)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def cancel_leftover_tasks() -> None:
    """Engine.IO leaves a ping task asleep per closed socket; end them before the loop closes."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def document(owner: Client, content: str = "", **roles: str) -> str:
    """Document ``doc`` with ``content``, created by ``owner`` and shared by ``roles``."""
    await owner.ok("documents:create", {"document_id": "doc", "content": content})
    for user_id, role in roles.items():
        await owner.ok("documents:share", {"document_id": "doc", "user_id": user_id,
                                           "role": role})
    return "doc"


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


async def move_slot(url: str, key: str) -> None:
    """Give the hash slot of ``key`` to another master of the Redis Cluster at ``url``, as
    the last step of a resharding does (``CLUSTER SETSLOT <slot> NODE <id>`` on every
    master; the slot must hold no keys). Its shard drops the slot's sharded subscriptions
    by itself, sending each subscriber a ``sunsubscribe`` nobody asked for."""
    client = redis_client(url)
    try:
        await client.initialize()
        owner = client.get_node_from_key(key)
        primaries = client.get_primaries()
        target = next(node for node in primaries if node.name != owner.name)
        target_id = await client.execute_command("CLUSTER MYID", target_nodes=target)
        slot = client.keyslot(key)
        for node in primaries:
            await client.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id,
                                         target_nodes=node)
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
#: the JavaScript provider's package (clients/js), tested by tests/test_js_client.py
CLIENT_JS_DIR = Path(__file__).parent.parent / "clients" / "js"


def node_or_skip(package: str, directory: Path = JS_DIR) -> str:
    """The ``node`` binary, once ``<directory>/node_modules/<package>`` is installed.

    Without them the test fails in CI (CI=true) and is skipped elsewhere.
    """
    node = shutil.which("node")
    missing = None
    if node is None:
        missing = "node is not installed"
    elif not (directory / "node_modules" / package).is_dir():
        where = directory.relative_to(Path(__file__).parent.parent)
        missing = f"{where}/node_modules is missing: run `npm ci --prefix {where}`"
    if missing is None:
        return node
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"JavaScript interop cannot run in CI: {missing}")
    pytest.skip(missing)


class YjsPeer:
    """Real ``yjs`` and ``y-protocols`` in a Node process (tests/js/yjs_peer.mjs).

    ``call(op, **fields)`` sends one request and returns its answer; ``bytes`` fields
    (and lists of them) go as base64 and the answer's ``update`` / ``state_vector``
    come back as ``bytes``.
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
        def encoded(value: Any) -> Any:
            if isinstance(value, bytes):
                return base64.b64encode(value).decode()
            if isinstance(value, list):
                return [encoded(item) for item in value]
            return value

        for key, value in fields.items():
            request[key] = encoded(value)
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


async def end_node_process(proc: asyncio.subprocess.Process, *readers: asyncio.Future) -> None:
    """End a Node script driven over stdin (closing stdin is its signal to exit; killed if
    it does not within WAIT), then its output readers."""
    if proc.stdin is not None and not proc.stdin.is_closing():
        proc.stdin.close()
    try:
        await asyncio.wait_for(proc.wait(), WAIT)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
    await asyncio.gather(*readers, return_exceptions=True)


class YjsProviders:
    """The stock y-websocket ``WebsocketProvider`` in a Node process (tests/js/yws_provider.mjs),
    playing named clients against a server on this event loop.

    ``await call(op, **fields)`` sends a request and returns its answer; what the
    providers see meanwhile (``status``, ``sync``, ``closed``, ``connection-close``,
    ``permission-denied``, ``text`` after each document update, ``awareness``) is queued
    per client and kind for :meth:`next` and :meth:`until`.
    """

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self._ids = 0
        self._answers: dict[int, asyncio.Future] = {}
        self.events: dict[tuple[str, str], asyncio.Queue] = defaultdict(asyncio.Queue)
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def start(cls) -> YjsProviders:
        node = node_or_skip("y-websocket")
        proc = await asyncio.create_subprocess_exec(
            node, str(JS_DIR / "yws_provider.mjs"), cwd=JS_DIR,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            limit=16 * 1024 * 1024)
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            message = json.loads(line)
            if "event" in message:
                self.events[(message.pop("name", ""), message.pop("event"))].put_nowait(message)
            elif (answer := self._answers.pop(message.pop("id"), None)) is not None:
                answer.set_result(message)
        for answer in self._answers.values():
            answer.set_exception(AssertionError("yws_provider.mjs exited"))

    async def call(self, op: str, **fields: Any) -> dict[str, Any]:
        self._ids += 1
        answer = self._answers[self._ids] = asyncio.get_running_loop().create_future()
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"id": self._ids, "op": op, **fields}) + "\n").encode())
        result = await asyncio.wait_for(answer, WAIT)
        assert result.pop("ok") is True, result.get("error")
        return result

    async def open(self, name: str, url: str, document_id: str, **fields: Any) -> int:
        """A provider for ``document_id`` on the server at ``url`` (its ``/yjs`` endpoint);
        returns its Yjs client id once it has synced."""
        ws_url = url.replace("http://", "ws://", 1) + "/yjs"
        opened = await self.call("open", name=name, url=ws_url, room=document_id, **fields)
        await self.until(name, "sync", lambda e: e["synced"])
        return opened["client_id"]

    async def next(self, name: str, kind: str, timeout: float = WAIT) -> dict[str, Any]:
        return await asyncio.wait_for(self.events[(name, kind)].get(), timeout)

    async def until(self, name: str, kind: str, accept: Any,
                    timeout: float = WAIT) -> dict[str, Any]:
        """The first ``kind`` event of ``name`` that ``accept(event)`` takes (earlier ones
        are consumed)."""
        deadline = time.monotonic() + timeout
        while True:
            event = await self.next(name, kind, max(0.0, deadline - time.monotonic()))
            if accept(event):
                return event

    async def text_is(self, name: str, expected: str) -> None:
        """Wait until ``name``'s document text is ``expected``."""
        if (await self.call("text", name=name))["text"] != expected:
            await self.until(name, "text", lambda e: e["text"] == expected)

    def pending(self, name: str, kind: str) -> list[dict[str, Any]]:
        queue = self.events[(name, kind)]
        return [queue.get_nowait() for _ in range(queue.qsize())]

    async def close(self) -> None:
        await end_node_process(self.proc, self._reader)


# -- collab.client: managers, what their handlers got, a `collab serve` process ----------


class Recorder:
    """Records what a manager's handlers receive, so a test can await a condition."""

    def __init__(self, manager: SocketManager, *events: str) -> None:
        self.seen: dict[str, list[Any]] = defaultdict(list)
        self._changed = asyncio.Event()
        for event in events:
            manager.on(event, partial(self._record, event))

    def _record(self, event: str, data: Any) -> None:
        self.seen[event].append(data)
        self._changed.set()

    async def until(self, predicate: Callable[[], bool], timeout: float = WAIT) -> None:
        async def wait() -> None:
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), timeout)

    async def count(self, event: str, n: int, timeout: float = WAIT) -> list[Any]:
        """Wait until ``event`` was received at least ``n`` times; return them all."""
        await self.until(lambda: len(self.seen[event]) >= n, timeout)
        return self.seen[event]

    def contents(self) -> list[str]:
        return [data["message"]["content"] for data in self.seen["chat:message"]]

    def seqs(self) -> list[int]:
        return [data["message"]["seq"] for data in self.seen["chat:message"]]


def manager(url: str, user: str = "alice", **options: Any) -> SocketManager:
    options.setdefault("ack_timeout", WAIT)
    if "token_provider" not in options:
        options.setdefault("token", make_token(user))
    return SocketManager(url, **options)


class Gate:
    """A token_provider the test can hold closed: reconnection waits on it."""

    def __init__(self, user: str = "alice", **claims: Any) -> None:
        self.user, self.claims = user, claims
        self.calls = 0
        self.asked = asyncio.Event()
        self.open = asyncio.Event()
        self.open.set()

    async def __call__(self) -> str:
        self.calls += 1
        self.asked.set()
        await self.open.wait()
        return make_token(self.user, **self.claims)


class CollabProcess(ServiceProcess):
    """``python -m collab serve`` on a fixed port with its SQLite file in ``tmpdir``."""

    name = "collab"

    def __init__(self, tmpdir: Path, **settings: Any) -> None:
        super().__init__(tmpdir)
        self.config = Path(tmpdir) / "collab.toml"
        settings = {"storage_url": f"sqlite:///{Path(tmpdir) / 'c.db'}",
                    "jwt_secret": SECRET, "log_level": "WARNING", **settings}
        self.config.write_text("".join(f"{k} = {_toml(v)}\n" for k, v in settings.items()))

    def local_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "collab", "serve", "--config", str(self.config),
                "--host", "127.0.0.1", "--port", str(self.port)]

    def ping(self) -> None:
        urllib.request.urlopen(self.url + "/healthz", timeout=1).close()

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, connections just die."""
        proc, self._proc = self._proc, None
        assert proc is not None
        proc.kill()
        proc.wait()


def _toml(value: Any) -> str:
    return str(value) if isinstance(value, int) else f'"{value}"'
class LivePeer:
    """A live member in Node (tests/js/live_peer.mjs): socket.io-client v4, a ``Y.Doc``
    and a y-protocols ``Awareness`` against a running server, as an editor's provider.

    Each method sends one request and awaits its answer; requests to one peer may be
    in flight together. Asynchronous, unlike :class:`YjsPeer`, because the server the
    peer talks to may run on the test's own event loop. A server's refusal comes back
    as the ack it sent (``ack["ok"]`` false); a failure of the peer itself (a timeout,
    a crash) fails the test.
    """

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self._ids = iter(range(1, 1 << 62))
        self._answers: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.ensure_future(self._read())
        self._stderr = bytearray()
        self._stderr_reader = asyncio.ensure_future(self._drain_stderr())

    @classmethod
    async def start(cls, url: str, token: str,
                    transports: tuple[str, ...] = ("websocket",)) -> LivePeer:
        """A peer connected to ``url`` with ``token`` over ``transports`` (asserts the
        connection succeeded)."""
        node = node_or_skip("socket.io-client")
        node_or_skip("y-protocols")
        proc = await asyncio.create_subprocess_exec(
            node, str(JS_DIR / "live_peer.mjs"), cwd=JS_DIR, limit=1 << 24,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        peer = cls(proc)
        connected = await peer.call("connect", url=url, token=token,
                                    transports=list(transports))
        assert connected["connected"], connected
        return peer

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            answer = json.loads(line)
            future = self._answers.pop(answer.pop("id"), None)
            if future is not None and not future.done():
                future.set_result(answer)
        for future in self._answers.values():  # the process ended
            if not future.done():
                future.set_exception(AssertionError(
                    f"live_peer.mjs exited ({self.proc.returncode}):\n{self._stderr.decode()}"))

    async def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        while chunk := await self.proc.stderr.read(1 << 16):
            self._stderr = (self._stderr + chunk)[-(1 << 16):]  # the tail: bounded

    async def call(self, op: str, timeout: float = 3 * WAIT, **fields: Any) -> dict[str, Any]:
        """Send request ``op``; its answer. ``bytes`` fields go as base64."""
        assert self.proc.stdin is not None
        request_id = next(self._ids)
        future = self._answers[request_id] = asyncio.get_running_loop().create_future()
        request = {"id": request_id, "op": op, **fields}
        # ensure_ascii: lone surrogates travel as \uXXXX escapes, which JSON.parse keeps
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        await self.proc.stdin.drain()
        answer = await asyncio.wait_for(future, timeout)
        assert answer.pop("ok") is True, f"{op}: {answer.get('error')}"
        return answer

    # -- the document ---------------------------------------------------------

    async def join(self, document_id: str) -> dict[str, Any]:
        """Join live by state vector, send what the server lacks: ``{ack, sent, text}``."""
        return await self.call("join", document_id=document_id)

    async def insert(self, index: int, text: str) -> dict[str, Any]:
        """Insert at a UTF-16 ``index`` and send the update: ``{ack, text}`` (``ack``
        None while offline)."""
        return await self.call("insert", index=index, text=text)

    async def delete(self, index: int, length: int) -> dict[str, Any]:
        return await self.call("delete", index=index, length=length)

    async def random_edits(self, n: int, seed: int, **options: Any) -> dict[str, Any]:
        """``n`` random inserts and deletes, sent interleaved with the room's updates
        (options: ``delete_ratio``, ``alphabet``): ``{edits: {insert, delete}, inserted,
        text}``."""
        return await self.call("random_edits", timeout=60, n=n, seed=seed, **options)

    async def text(self) -> str:
        return (await self.call("text"))["text"]

    async def settled(self, version: int, timeout: float = 2 * WAIT) -> str:
        """The text once the peer has ``version`` and no ack is outstanding."""
        answer = await self.call("settled", timeout=timeout + 1, version=version,
                                 timeout_ms=int(timeout * 1000))
        return answer["text"]

    async def wait_version(self, version: int, timeout: float = 2 * WAIT) -> int:
        """Once the peer has seen ``version`` (its own or the room's); the version it has."""
        answer = await self.call("wait_version", timeout=timeout + 1, version=version,
                                 timeout_ms=int(timeout * 1000))
        return answer["version"]

    async def wait_text(self, text: str, timeout: float = 2 * WAIT) -> None:
        await self.call("wait_text", timeout=timeout + 1, text=text,
                        timeout_ms=int(timeout * 1000))

    async def report(self) -> dict[str, Any]:
        """``{received, acks: [{kind, version}], joins, refused, errors, timeline,
        client_id}``: the versions received from the room in arrival order, the own
        updates acked and refused, each join's version, the ``error`` events, and
        ``timeline``: ``["join", version]``, ``["yupdate", version]`` and ``["ack",
        version, kind]`` as they came."""
        return await self.call("report")

    async def send(self, event: str, payload: dict[str, Any],
                   **binary: bytes) -> dict[str, Any]:
        """Emit any event (``binary`` fields as attachments); the server's ack."""
        encoded = {key: base64.b64encode(value).decode() for key, value in binary.items()}
        return (await self.call("send", event=event, payload=payload, binary=encoded))["ack"]

    # -- awareness ------------------------------------------------------------

    async def awareness_set(self, state: Any) -> dict[str, Any]:
        """Set the local state and send it: ``{client_id, ack}``."""
        return await self.call("awareness_set", state=state)

    async def awareness_states(self) -> dict[int, Any]:
        states = (await self.call("awareness_states"))["states"]
        return {int(client_id): state for client_id, state in states.items()}

    async def wait_awareness(self, client_id: int, state: Any, timeout: float = 2 * WAIT) -> float:
        """Wait until ``client_id``'s state is ``state`` (None: gone); milliseconds waited."""
        answer = await self.call("wait_awareness", timeout=timeout + 1, client_id=client_id,
                                 state=state, timeout_ms=int(timeout * 1000))
        return answer["waited_ms"]

    # -- the connection -------------------------------------------------------

    async def disconnect(self) -> None:
        await self.call("disconnect")

    async def reconnect(self) -> dict[str, Any]:
        """Connect again and rejoin by state vectors (awareness announced anew)."""
        answer = await self.call("reconnect")
        assert answer["connected"], answer
        return answer

    async def resync(self) -> dict[str, Any]:
        """Join again on this connection by state vectors, sending what the server lacks
        (refused updates included) as one: ``{ack, sent, text}``."""
        return await self.call("resync")

    async def reload(self) -> dict[str, Any]:
        """Drop the ``Y.Doc`` and rejoin with a fresh one (a new client id): what a client
        does after a refusal. ``{client_id, ack, sent, text}``."""
        return await self.call("reload")

    async def close(self) -> None:
        await end_node_process(self.proc, self._reader, self._stderr_reader)


@contextlib.contextmanager
def nodes(io_loop, redis_url: str, storage_url: str, count: int) -> Iterator[list[Harness]]:
    """``count`` in-process nodes sharing one Redis and one store."""
    servers: list[Harness] = []
    try:
        for _ in range(count):
            settings = make_settings(registry_url=redis_url, storage_url=storage_url,
                                     node_id=unique("node"), rate_limit_per_second=0)
            servers.append(Harness(io_loop.run_sync(lambda s=settings: Server.start(s))))
        yield servers
    finally:
        for harness in servers:
            io_loop.run_sync(harness.close_clients)
            io_loop.run_sync(harness.server.stop)
        io_loop.run_sync(cancel_leftover_tasks)
