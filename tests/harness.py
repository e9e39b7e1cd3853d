"""A real server on a free port and real python-socketio clients, for protocol tests."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import jwt
import pytest
import socketio
from redis.asyncio.cluster import RedisCluster
from services import ServiceProcess
from tornado.httpclient import AsyncHTTPClient

from collab.broadcast.wire import EMIT, Envelope, channel_for
from collab.client import SocketManager
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
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), WAIT)
        except asyncio.TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        await self._reader


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
