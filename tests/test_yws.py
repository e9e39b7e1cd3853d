"""The y-websocket endpoint (PROTOCOL v2 "The y-websocket endpoint"): the stock
``y-websocket`` 3 provider (Node, tests/js/yws_provider.mjs) beside Socket.IO live
members (pycrdt peers) and plain v1 members of the same documents.
"""

from __future__ import annotations

import json
import logging
import time

import pycrdt
import pytest
import tornado.httpclient
import tornado.websocket
from harness import (
    WAIT,
    Client,
    PycrdtPeer,
    YjsProviders,
    document,
    make_settings,
    make_token,
    nodes,
    scrape,
    scraped,
)
from pycrdt import create_update_message

from collab.awareness import Entry, decode_update, encode_update


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
    live = PycrdtPeer(alice, "doc")
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


async def test_refusals_at_the_upgrade(server):
    alice = await server.connect("alice")
    await document(alice, "secret text", bob="viewer")
    expired = make_token("bob", ttl=-60)
    forged = make_token("bob", key="not-the-server-secret-0123456789abcdef")
    for query in ("", "?token=", "?token=garbage", f"?token={expired}", f"?token={forged}"):
        status, body = await upgrade_status(ws_url(server, "doc", query))
        assert status == 401 and body["code"] == "UNAUTHORIZED", (query, status, body)
    # no role on the document, and no such document: the same answer
    for document_id, user in (("doc", "carol"), ("nothing-here", "bob"), ("bad%20id", "bob")):
        status, body = await upgrade_status(
            ws_url(server, document_id, f"?token={make_token(user)}"))
        assert status == 404 and body["code"] == "NOT_FOUND", (document_id, body)
    # origins as for Socket.IO
    status, body = await upgrade_status(ws_url(server, "doc", f"?token={make_token('bob')}"),
                                        {"Origin": "https://elsewhere.example"})
    assert status == 403 and body["code"] == "PERMISSION_DENIED"
    refused = await scrape(server.url)
    assert refused['collab_yjs_refused_total{code="UNAUTHORIZED"}'] == 5
    assert refused['collab_yjs_refused_total{code="NOT_FOUND"}'] == 3
    assert refused['collab_yjs_refused_total{code="PERMISSION_DENIED"}'] == 1
    assert refused["collab_yjs_connections"] == 0


async def test_a_refused_provider_reports_the_refusal_and_never_syncs(server, yws):
    alice = await server.connect("alice")
    await document(alice, "x")
    await yws.call("open", name="eve", url=ws_url(server, "").rsplit("/", 1)[0], room="doc",
                   token=make_token("eve"))
    error = await yws.next("eve", "connection-error")
    assert "404" in error["message"]
    assert yws.pending("eve", "sync") == []


async def test_a_bearer_header_works_without_the_query_parameter(server, yws):
    alice = await server.connect("alice")
    await document(alice, "by header", bob="editor")
    await yws.open("bob", server.url, "doc", bearer=make_token("bob"))
    await yws.text_is("bob", "by header")
    live = PycrdtPeer(alice, "doc")
    await live.join()
    await yws.call("insert", name="bob", index=0, text="sent ")
    got = await live.receive()
    assert (got["user_id"], got["version"], live.content) == ("bob", 1, "sent by header")
    status, _ = await upgrade_status(ws_url(server, "doc"),
                                     {"Authorization": f"Bearer {make_token('carol')}"})
    assert status == 404


async def test_a_viewer_is_read_only(server, yws):
    alice = await server.connect("alice")
    await document(alice, "read me", bob="editor", carol="viewer")
    live = PycrdtPeer(alice, "doc")
    await live.join()
    await yws.open("carol", server.url, "doc", token=make_token("carol"))
    await yws.open("bob", server.url, "doc", token=make_token("bob"))

    await yws.call("insert", name="carol", index=0, text="VIEWER ")
    denied = await yws.next("carol", "permission-denied")  # the server has read it
    assert "viewer" in denied["reason"]
    assert server.app.documents.peek("doc").doc.content == "read me"  # never applied
    # the editor's next change is the first anyone else gets: the viewer's went nowhere
    await yws.call("insert", name="bob", index=7, text="!")
    got = await live.receive()
    assert (got["user_id"], got["version"], live.content) == ("bob", 1, "read me!")
    await yws.text_is("carol", "VIEWER read me!")  # (its own local edit stays local)
    assert (await yws.call("text", name="bob"))["text"] == "read me!"
    assert await versions(alice) == [0, 1]
    stored = (await alice.ok("documents:get", {"document_id": "doc"}))["document"]
    assert stored["content"] == "read me!"
    # nor does a later sync carry it: a fresh reader gets the stored document only
    await yws.open("dave", server.url, "doc", token=make_token("alice"))
    await yws.text_is("dave", "read me!")


async def test_awareness_both_ways_and_removed_on_close(server, yws):
    alice = await server.connect("alice")
    await document(alice, "", bob="editor", carol="viewer")
    live = PycrdtPeer(alice, "doc")
    await live.join()
    bob_id = await yws.open("bob", server.url, "doc", token=make_token("bob"),
                            state={"user": "bob", "cursor": 1})
    # the provider's state reaches the Socket.IO member
    got = await alice.next("documents:awareness")
    entries = {e.client_id: e for e in decode_update(got["update"])}
    assert json.loads(entries[bob_id].state) == {"user": "bob", "cursor": 1}

    # the Socket.IO member's state reaches the provider
    await alice.ok("documents:awareness", {"document_id": "doc", "update": encode_update(
        [Entry(4242, 1, json.dumps({"user": "alice"}))])})
    seen = await yws.until("bob", "awareness", lambda e: "4242" in e["states"])
    assert seen["states"]["4242"] == {"user": "alice"}

    # a newcomer gets every state at once, on the same endpoint
    carol_id = await yws.open("carol", server.url, "doc", token=make_token("carol"),
                              state={"user": "carol"})
    states = (await yws.until("carol", "awareness",
                              lambda e: {"4242", str(bob_id)} <= set(e["states"])))["states"]
    assert states[str(bob_id)] == {"user": "bob", "cursor": 1}
    await yws.until("bob", "awareness", lambda e: str(carol_id) in e["states"])

    # the network goes (no goodbye from the client): the others lose its cursor at once
    await yws.call("cut", name="bob")
    removal = await alice.next("documents:awareness")
    while bob_id not in {e.client_id for e in decode_update(removal["update"])}:
        removal = await alice.next("documents:awareness")
    assert [e.state for e in decode_update(removal["update"]) if e.client_id == bob_id] \
        == [None]
    await yws.until("carol", "awareness", lambda e: str(bob_id) not in e["states"])
    assert bob_id not in server.app.documents.awareness("doc").states()
    # and when the Socket.IO member leaves, the provider loses its states too
    await alice.ok("documents:leave", {"document_id": "doc"})
    await yws.until("carol", "awareness", lambda e: "4242" not in e["states"])


async def test_token_expiry_closes_the_socket(server, yws):
    alice = await server.connect("alice")
    await document(alice, "short lived", bob="editor")
    await yws.open("bob", server.url, "doc", token=make_token("bob", ttl=1.5),
                   state={"user": "bob"})
    live = PycrdtPeer(alice, "doc")
    await live.join()
    closed = await yws.next("bob", "closed", timeout=WAIT + 2)
    assert closed["code"] == 4401 and "expired" in closed["reason"]
    # (4401: the provider does not reconnect by itself) with a fresh token it does
    await yws.call("reconnect", name="bob", token=make_token("bob"))
    await yws.until("bob", "sync", lambda e: e["synced"])
    await yws.call("insert", name="bob", index=0, text="still ")
    got = await live.receive()
    assert got["user_id"] == "bob" and live.content == "still short lived"


async def test_a_token_never_reaches_the_log(server, yws, caplog):
    caplog.set_level(logging.DEBUG)
    alice = await server.connect("alice")
    await document(alice, "x", bob="editor")
    good, bad = make_token("bob"), make_token("bob", key="wrong-secret-0123456789abcdef-0123")
    await yws.open("bob", server.url, "doc", token=good)  # a 101
    assert (await upgrade_status(ws_url(server, "doc", f"?token={bad}")))[0] == 401
    assert (await upgrade_status(ws_url(server, "gone", f"?token={good}")))[0] == 404
    # Socket.IO refusing a request whose URL carries a credential parameter
    client = tornado.httpclient.AsyncHTTPClient()
    response = await client.fetch(
        server.url + f"/socket.io/?EIO=4&transport=bogus&access_token={good}",
        raise_error=False)
    assert response.code == 400
    await yws.call("destroy", name="bob")
    text = caplog.text
    access = [r.getMessage() for r in caplog.records if r.name == "tornado.access"]
    assert [line for line in access if line.startswith("101 GET /yjs/doc?token=*** ")]
    assert [line for line in access if line.startswith("401 GET /yjs/doc?token=*** ")]
    assert [line for line in access if line.startswith("404 GET /yjs/gone?token=*** ")]
    assert [line for line in access if "access_token=***" in line]
    for token in (good, bad):
        assert token not in text
        assert token.split(".")[2] not in text  # not even the signature


async def test_edits_made_through_the_endpoint_are_durable_across_a_restart(settings, yws):
    from harness import Harness

    from collab.server import Server

    first = Harness(await Server.start(settings))
    try:
        alice = await first.connect("alice")
        await document(alice, "", bob="editor")
        live = PycrdtPeer(alice, "doc")
        await live.join()
        await yws.open("bob", first.url, "doc", token=make_token("bob"))
        for i, word in enumerate(["durable ", "through ", "restarts"]):
            await yws.call("insert", name="bob", index=len("".join(
                ["durable ", "through ", "restarts"][:i])), text=word)
            await live.receive()  # stored (then relayed)
    finally:
        await first.close_clients()
        await first.server.stop()
    # the node closed the provider's socket as it stopped ("going away": it would retry)
    assert (await yws.next("bob", "connection-close"))["code"] == 1001
    assert first.app.yjs_sockets == {}
    await yws.call("destroy", name="bob")
    again = Harness(await Server.start(settings))
    try:
        await yws.open("bob2", again.url, "doc", token=make_token("bob"))
        await yws.text_is("bob2", "durable through restarts")
        alice = await again.connect("alice")
        assert await versions(alice) == [0, 1, 2, 3]
    finally:
        await again.close_clients()
        await again.server.stop()


@pytest.fixture
def pair(io_loop, redis_url, mongo_db):
    """Two in-process nodes sharing a redis-server and the Mongo wire server."""
    with nodes(io_loop, redis_url, mongo_db, 2) as servers:
        yield servers


@pytest.mark.cluster
async def test_edits_through_different_nodes_converge(pair, yws):
    one, two = pair
    alice = await one.connect("alice")
    await document(alice, "", bob="editor", carol="editor")
    live = PycrdtPeer(await one.connect("alice"), "doc")
    await live.join()
    plain = await one.connect("carol")
    await plain.ok("documents:join", {"document_id": "doc"})
    await yws.open("bob", one.url, "doc", token=make_token("bob"))
    # node two's only member of the document: it hears the room for this socket alone
    await yws.open("carol", two.url, "doc", token=make_token("carol"))
    await yws.call("insert", name="bob", index=0, text="one")
    await yws.text_is("carol", "one")  # node one to node two
    await yws.call("insert", name="carol", index=3, text=" two")
    await yws.text_is("bob", "one two")  # and back
    # all at once, from all three
    await yws.call("insert", name="bob", index=0, text="[")
    await yws.call("insert", name="carol", index=7, text="]")
    await live.send(live.edit(lambda t: t.insert(len(t), "!")))
    while len(live.seen) < 5:
        await live.receive()
    await yws.text_is("bob", live.content)
    await yws.text_is("carol", live.content)
    assert sorted(live.seen) == [1, 2, 3, 4, 5]
    assert sorted(live.content) == sorted("[one two]!")
    updated = [(await plain.next("documents:updated"))["document"] for _ in range(5)]
    assert [d["version"] for d in updated] == [1, 2, 3, 4, 5]  # in version order
    assert updated[-1]["content"] == live.content
    assert await versions(alice) == [0, 1, 2, 3, 4, 5]
    # a revocation made on node one closes the socket on node two
    await alice.ok("documents:share", {"document_id": "doc", "user_id": "carol", "role": None})
    closed = await yws.next("carol", "closed")
    assert closed["code"] == 4403


async def test_bad_messages_close_the_socket_and_change_nothing(server):
    alice = await server.connect("alice")
    await document(alice, "intact", bob="editor")
    url = ws_url(server, "doc", f"?token={make_token('bob')}")
    big = pycrdt.Doc()
    big["content"] = pycrdt.Text("x" * (server.app.settings.max_document_bytes + 1))
    too_big = big.get_update()
    cases = [
        (b"", 4400), (b"\xff", 4400),  # no message type; a truncated varuint
        (b"\x00\x02\x05ab", 4400),  # a length past the end
        (b"\x00\x02\x03\x01\x02\x03", 4400),  # an update that does not decode
        (b"\x07", 4400),  # no such message type
        ("text", 4400),  # y-websocket messages are binary
        (b"\x01\x03\x01\x02\x03", 4400),  # an awareness update that does not decode
        (create_update_message(too_big), 4413),  # over max_document_bytes
    ]
    for message, code in cases:
        conn = await tornado.websocket.websocket_connect(url)
        await conn.read_message()  # the server's sync step 1
        await conn.write_message(message, binary=isinstance(message, bytes))
        while await conn.read_message() is not None:
            pass
        assert conn.close_code == code, (message, conn.close_code, conn.close_reason)
        assert conn.close_reason
    stored = (await alice.ok("documents:get", {"document_id": "doc"}))["document"]
    assert (stored["content"], stored["version"]) == ("intact", 0)


async def test_revoking_access_closes_the_socket(server, yws):
    alice = await server.connect("alice")
    await document(alice, "mine", bob="editor")
    await yws.open("bob", server.url, "doc", token=make_token("bob"))
    await alice.ok("documents:share", {"document_id": "doc", "user_id": "bob", "role": None})
    closed = await yws.next("bob", "closed")
    assert closed["code"] == 4403 and "revoked" in closed["reason"]
    assert await scraped(server.url, "collab_yjs_connections", 0) == 0
    assert server.app.yjs_sockets == {}
    # (4403: the provider does not come back)
    assert [e for e in yws.pending("bob", "sync") if e["synced"]] == []


async def test_a_socket_over_its_rate_is_read_slower_and_loses_nothing(tmp_path, yws):
    from harness import Harness

    from collab.server import Server

    # 20 messages a second, bursts of 4 (enough for alice's three calls): the provider's
    # 12 edits cannot all go at once
    settings = make_settings(storage_url=f"sqlite:///{tmp_path}/rate.db",
                             rate_limit_per_second=20, rate_limit_burst=4)
    node = Harness(await Server.start(settings))
    try:
        alice = await node.connect("alice")
        await document(alice, "", bob="editor")
        live = PycrdtPeer(alice, "doc")
        await live.join()
        await yws.open("bob", node.url, "doc", token=make_token("bob"))
        start = time.monotonic()
        for i in range(12):
            await yws.call("insert", name="bob", index=i, text="abcdefghijkl"[i])
        while len(live.seen) < 12:
            await live.receive()
        elapsed = time.monotonic() - start
        assert live.content == "abcdefghijkl" and sorted(live.seen) == list(range(1, 13))
        assert elapsed >= (12 - 4) / 20 * 0.75, elapsed  # 8 or more waited for the bucket
    finally:
        await node.close_clients()
        await node.server.stop()
