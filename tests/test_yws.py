"""The y-websocket endpoint (PROTOCOL v2 "The y-websocket endpoint"): the stock
``y-websocket`` 3 provider (Node, tests/js/yws_provider.mjs) beside Socket.IO live
members (pycrdt peers) and plain v1 members of the same documents.
"""

from __future__ import annotations

import json

import pytest
import tornado.httpclient
import tornado.websocket
from harness import Client, YjsProviders, make_settings, make_token
from test_live_documents import Peer, document


@pytest.fixture
def settings(tmp_path):
    return make_settings(storage_url=f"sqlite:///{tmp_path}/collab.db",
                         rate_limit_per_second=0)


@pytest.fixture
def yws(io_loop):
    providers = io_loop.run_sync(YjsProviders.start)
    yield providers
    io_loop.run_sync(providers.close)


def ws_url(server, document_id: str, query: str = "") -> str:
    return server.url.replace("http://", "ws://") + f"/yjs/{document_id}{query}"


async def upgrade_status(url: str, headers: dict | None = None) -> tuple[int, dict]:
    """The HTTP status of a WebSocket upgrade that is refused, and its JSON body."""
    request = tornado.httpclient.HTTPRequest(url, headers=headers or {})
    try:
        conn = await tornado.websocket.websocket_connect(request)
    except tornado.httpclient.HTTPClientError as exc:
        body = exc.response.body if exc.response is not None else b""
        return exc.code, json.loads(body) if body else {}
    conn.close()
    raise AssertionError(f"{url} was upgraded")


async def versions(client: Client, document_id: str = "doc") -> list[int]:
    ack = await client.ok("documents:history", {"document_id": document_id, "limit": 200})
    return [v["version"] for v in ack["versions"]]


async def test_the_stock_provider_edits_beside_live_and_plain_members(server, yws):
    alice = await server.connect("alice")
    await document(alice, "abc", bob="editor", dave="viewer")
    live = Peer(alice, "doc")
    await live.join()
    dave = await server.connect("dave")  # a plain (v1) member
    await dave.ok("documents:join", {"document_id": "doc"})

    await yws.open("bob", server.url, "doc", token=make_token("bob"))
    await yws.text_is("bob", "abc")

    # the provider's edit: one version, to the live member as a Yjs update and to the
    # plain one as the whole document
    await yws.call("insert", name="bob", index=3, text="DEF")
    got = await live.receive()
    assert (got["version"], got["user_id"], live.content) == (1, "bob", "abcDEF")
    plain = await dave.next("documents:updated")
    assert (plain["document"]["content"], plain["document"]["version"]) == ("abcDEF", 1)
    assert plain["user_id"] == "bob"

    # a Socket.IO member's edit reaches the provider
    assert (await live.send(live.edit(lambda t: t.insert(0, ">")))) ["version"] == 2
    await yws.text_is("bob", ">abcDEF")

    # concurrent edits from both sides converge, every accepted change one version
    await yws.call("insert", name="bob", index=7, text="!")
    await live.send(live.edit(lambda t: t.insert(1, "*")))
    while live.seen != {1, 2, 3, 4}:  # its own ack's version, and the provider's
        await live.receive()
    assert live.content == ">*abcDEF!"
    await yws.text_is("bob", live.content)
    stored = (await dave.ok("documents:get", {"document_id": "doc"}))["document"]
    assert stored["content"] == live.content and stored["version"] == 4
    assert await versions(alice) == [0, 1, 2, 3, 4]
    while (await dave.next("documents:updated"))["document"]["version"] < 4:
        pass
    assert not live.waiting  # each change reached it once
