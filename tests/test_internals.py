"""The library internals collab builds on are still there, with the shapes it expects.

The fast broadcast path (collab/broadcast/local.py), the packet guards
(collab/sioserver.py, collab/packet.py, collab/transport.py) and the listener
(collab/listener.py) reach
below the public APIs of python-socketio, python-engineio, Tornado and
asyncio. pyproject.toml pins those libraries to the minor versions these
tests ran with; this file is what fails, naming the attribute and who needs
it, when a new version moves one, so that raising a pin is a decision.
"""

from __future__ import annotations

import asyncio
import inspect

import engineio
import pytest
import socketio
import tornado.iostream
import tornado.tcpserver
import tornado.websocket
from engineio.async_socket import AsyncSocket

from collab.broadcast import LocalBroadcaster
from collab.listener import CountedStream
from collab.packet import CollabPacket
from collab.sioserver import EngineIOServer, GuardedServer

#: (library class, method, the collab class that overrides or calls it)
METHODS = [
    (socketio.AsyncServer, "_handle_eio_message", GuardedServer),
    (socketio.AsyncServer, "_handle_eio_connect", GuardedServer),
    (socketio.AsyncServer, "_handle_eio_disconnect", GuardedServer),
    (socketio.AsyncServer, "_handle_connect", GuardedServer),
    (socketio.AsyncServer, "_handle_event", GuardedServer),
    (socketio.AsyncServer, "_handle_ack", GuardedServer),
    (socketio.AsyncServer, "_handle_disconnect", GuardedServer),
    (socketio.AsyncServer, "_engineio_server_class", GuardedServer),
    (engineio.AsyncServer, "start_background_task", EngineIOServer),
    (AsyncSocket, "_send_ping", EngineIOServer),
    (AsyncSocket, "close", None),
    (socketio.packet.Packet, "decode", CollabPacket),
    (socketio.packet.Packet, "add_attachment", None),
    (socketio.AsyncManager, "emit", LocalBroadcaster),
    (socketio.AsyncManager, "disconnect", LocalBroadcaster),
    (socketio.AsyncManager, "get_participants", LocalBroadcaster),
    (socketio.AsyncManager, "is_pre_connected", None),
    (socketio.AsyncManager, "sid_from_eio_sid", None),
    (socketio.AsyncManager, "eio_sid_from_sid", None),
    (tornado.iostream.BaseIOStream, "close_fd", CountedStream),
    (tornado.iostream.BaseIOStream, "writing", None),
    (tornado.tcpserver.TCPServer, "handle_stream", None),
    (tornado.websocket.WebSocketHandler, "write_message", None),
]


def _parameters(function) -> list[str]:
    return [name for name in inspect.signature(function).parameters if name != "self"]


@pytest.mark.parametrize(("library", "name", "ours"), METHODS,
                         ids=[f"{lib.__name__}.{name}" for lib, name, _ in METHODS])
def test_library_method_is_there_with_the_parameters_we_use(library, name, ours):
    where = f"{library.__module__}.{library.__qualname__}.{name}"
    assert hasattr(library, name), (
        f"{where} is gone; {ours.__qualname__ if ours else 'collab'} relies on it: "
        "adapt collab or keep the library's version pin")
    if ours is not None and name in vars(ours):
        theirs, mine = _parameters(getattr(library, name)), _parameters(getattr(ours, name))
        # our override accepts what the library passes (it may take more, with defaults)
        assert mine[:len(theirs)] == theirs or "args" in mine, (
            f"{where}{theirs} no longer matches {ours.__qualname__}.{name}{mine}")


async def test_instance_internals_of_a_live_connection(server):
    """The attributes the fast path and the guards read off live objects."""
    alice = await server.connect("alice")
    sio = server.app.sio
    missing = []

    def need(obj, attribute: str, who: str) -> None:
        if not hasattr(obj, attribute):
            missing.append(f"{type(obj).__module__}.{type(obj).__qualname__}.{attribute} "
                           f"(used by {who})")

    need(sio, "_binary_packet", "collab/sioserver.py")
    need(sio, "environ", "collab/broadcast/local.py, collab/sioserver.py")
    need(sio, "packet_class", "collab/broadcast/local.py")
    need(sio.manager, "callbacks", "collab/sioserver.py")
    need(sio.manager, "rooms", "collab/broadcast/local.py, collab/membership.py")
    need(sio.eio, "sockets", "collab/broadcast/local.py, collab/transport.py")
    need(sio.eio, "max_http_buffer_size", "collab/sioserver.py")
    need(sio.reason, "CLIENT_DISCONNECT", "collab/sioserver.py")
    need(sio.eio.reason, "TRANSPORT_ERROR", "collab/transport.py")
    eio_sid = sio.manager.eio_sid_from_sid(alice.sid, "/")
    sock = sio.eio.sockets[eio_sid]
    for attribute in ("upgraded", "upgrading", "closing", "closed", "connected", "queue"):
        need(sock, attribute, "collab/broadcast/local.py, collab/transport.py")
    # asyncio.Queue's count of unfinished tasks: the fast path's "is anything in flight"
    need(sock.queue, "_unfinished_tasks", "collab/broadcast/local.py _queue_busy")
    handler = sio.environ[eio_sid]["tornado.handler"]
    need(handler, "ws_connection", "collab/broadcast/local.py")
    stream = handler.ws_connection.stream
    for attribute in ("_write_buffer", "max_write_buffer_size", "socket"):
        need(stream, attribute, "collab/broadcast/local.py")
    if hasattr(stream, "_write_buffer"):
        assert isinstance(len(stream._write_buffer), int)
    assert not missing, "library internals collab relies on are gone:\n" + "\n".join(missing)


def test_engineio_payloads_take_their_packet_bound_from_the_class():
    """collab/transport.py raises ``Payload.max_decode_packets`` for the process."""
    from engineio import payload

    assert isinstance(payload.Payload.max_decode_packets, int), "engineio.payload.Payload" \
        ".max_decode_packets is gone (collab/transport.py MAX_POST_PACKETS sets it)"
    assert "self.max_decode_packets" in inspect.getsource(payload.Payload.decode)


def test_asyncio_queue_counts_unfinished_tasks():
    """collab/broadcast/local.py reads ``Queue._unfinished_tasks`` to tell an idle queue."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    assert queue._unfinished_tasks == 0
    queue.put_nowait(1)
    assert queue._unfinished_tasks == 1
    queue.get_nowait()
    queue.task_done()
    assert queue._unfinished_tasks == 0


async def test_redis_cluster_client_internals_the_sharded_links_use():
    """collab/broadcast/channels.py ShardedLink opens one subscriber connection per shard
    from what the cluster client knows of each node, and refreshes the slot map itself."""
    from redis.asyncio.cluster import ClusterNode, NodesManager, RedisCluster

    node = ClusterNode("127.0.0.1", 1)
    missing = [f"ClusterNode.{a}" for a in ("connection_kwargs", "connection_class", "name")
               if not hasattr(node, a)]
    missing += [f"RedisCluster.{a}" for a in ("get_node_from_key", "spublish", "initialize")
                if not hasattr(RedisCluster, a)]
    if not hasattr(NodesManager, "initialize"):
        missing.append("NodesManager.initialize")
    assert {"host", "port"} <= set(getattr(node, "connection_kwargs", {})), \
        "ClusterNode.connection_kwargs no longer holds host and port"
    assert not missing, "redis-py internals collab/broadcast/channels.py relies on: " \
        + ", ".join(missing)


async def test_our_environ_is_the_tornado_drivers_environ(server):
    """collab/environ.py builds the environ Engine.IO's Tornado driver builds (same keys,
    same values), without its class per request; the server uses it."""
    from engineio.async_drivers import tornado as driver

    from collab.environ import AwaitablePayload, translate_request

    alice = await server.connect("alice")
    sio = server.app.sio
    assert sio.eio._async["translate_request"] is translate_request
    eio_sid = sio.manager.eio_sid_from_sid(alice.sid, "/")
    handler = sio.environ[eio_sid]["tornado.handler"]
    ours, theirs = translate_request(handler), driver.translate_request(handler)
    assert isinstance(ours["wsgi.input"], AwaitablePayload)
    assert await ours.pop("wsgi.input").read() == await theirs.pop("wsgi.input").read()
    assert ours == theirs
    assert "HTTP_UPGRADE" in ours and "HTTP_SEC_WEBSOCKET_KEY" in ours
