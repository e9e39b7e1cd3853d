"""/healthz, /readyz and /metrics on the Socket.IO port."""

from __future__ import annotations

import json
import logging
import platform

import pytest
from harness import make_settings, make_token, scrape, scraped
from rawsocket import RawPolling, RawSocket
from services import free_port
from tornado.httpclient import AsyncHTTPClient

from collab import __version__

METRICS_TOKEN = "metrics-token-0123456789abcdef"
FREE_PORT = -1  # a metrics_port the settings fixture replaces with a free one


@pytest.fixture
def settings(request: pytest.FixtureRequest):
    """Test settings plus the overrides a test parametrizes ``settings`` with."""
    overrides = dict(getattr(request, "param", {}))
    if overrides.get("metrics_port") == FREE_PORT:
        overrides["metrics_port"] = free_port()  # picked now, not at collection
    return make_settings(**overrides)


async def get(server, path, headers=None, url=None):
    return await AsyncHTTPClient().fetch((url or server.url) + path, headers=headers,
                                         raise_error=False)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_healthz(server):
    response = await get(server, "/healthz")
    assert response.code == 200
    assert json.loads(response.body) == {"status": "ok"}


async def test_readyz_when_everything_answers(server):
    response = await get(server, "/readyz")
    assert response.code == 200
    assert json.loads(response.body) == {"status": "ok", "failed": []}


async def test_readyz_names_the_store_when_it_is_gone(server):
    await server.app.raw_store.close()  # a real closed database, not a stub
    response = await get(server, "/readyz")
    assert response.code == 503
    assert json.loads(response.body) == {"status": "unavailable", "failed": ["store"]}
    assert (await get(server, "/healthz")).code == 200


async def test_store_gone_answers_unavailable_and_keeps_serving(server):
    alice = await server.connect("alice")
    await server.app.raw_store.close()
    await alice.fails("documents:create", {}, "UNAVAILABLE")
    await alice.fails("unknown:event", {}, "INVALID_INPUT")


async def test_metrics_count_connections_events_and_latency(server):
    alice = await server.connect("alice")
    await alice.ok("documents:create", {"document_id": "d"})
    await alice.fails("documents:create", {"document_id": "d"}, "ALREADY_EXISTS")
    await server.refused(auth={"token": "nope"})

    response = await get(server, "/metrics")
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    text = response.body.decode()
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines() if line and not line.startswith("#")
    }
    assert samples["collab_connections"] == 1
    assert samples['collab_events_total{event="documents:create",outcome="ok"}'] == 1
    assert samples['collab_events_total{event="documents:create",outcome="ALREADY_EXISTS"}'] == 1
    assert samples['collab_connects_refused_total{code="UNAUTHORIZED"}'] == 1
    assert samples['collab_handler_latency_seconds_count{event="documents:create"}'] == 2
    assert samples['collab_store_latency_seconds_count{operation="create_document"}'] == 2


async def test_unknown_events_share_one_metric_label(server):
    alice = await server.connect("alice")
    for name in ("a", "b", "c"):
        await alice.fails(name, {}, "INVALID_INPUT")
    text = (await get(server, "/metrics")).body.decode()
    assert 'collab_events_total{event="unknown",outcome="INVALID_INPUT"} 3.0' in text
    assert 'event="a"' not in text


@pytest.mark.parametrize("settings", [{"metrics_token": METRICS_TOKEN}], indirect=True)
async def test_metrics_need_the_bearer_token_when_one_is_set(server, caplog):
    caplog.set_level(logging.DEBUG)
    refused = [None, bearer("wrong-token-0123456789abcdef"), bearer(METRICS_TOKEN[:-1]),
               bearer(METRICS_TOKEN + "x"), {"Authorization": f"Basic {METRICS_TOKEN}"},
               {"Authorization": METRICS_TOKEN}, bearer("")]
    for headers in refused:
        response = await get(server, "/metrics", headers)
        assert response.code == 401, f"{headers}: {response.code}"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert b"collab_" not in response.body
    response = await get(server, "/metrics", bearer(METRICS_TOKEN))
    assert response.code == 200
    assert b"collab_connections" in response.body
    response = await get(server, "/metrics", {"Authorization": f"bearer  {METRICS_TOKEN}"})
    assert response.code == 200  # the scheme is case-insensitive (RFC 9110)
    assert (await get(server, "/healthz")).code == 200  # probes need no token
    assert METRICS_TOKEN not in caplog.text
    access = [r.getMessage() for r in caplog.records if r.name == "tornado.access"]
    assert any(line.startswith("200 GET /metrics") for line in access), access
    # a flood of refused scrapes is no flood of log lines (Tornado logs 4xx as warnings)
    assert not [line for line in access if line.startswith("401")], access


@pytest.mark.parametrize("settings", [{"metrics_port": FREE_PORT}], indirect=True)
async def test_metrics_on_their_own_port_and_not_on_the_main_one(server):
    own = f"http://127.0.0.1:{server.app.settings.metrics_port}"
    response = await get(server, "/metrics", url=own)
    assert response.code == 200
    assert b"collab_connections" in response.body
    assert (await get(server, "/metrics")).code == 404
    assert (await get(server, "/healthz")).code == 200
    assert (await get(server, "/healthz", url=own)).code == 404
    assert server.server.metrics_port == server.app.settings.metrics_port


@pytest.mark.parametrize(
    "settings", [{"metrics_port": FREE_PORT, "metrics_token": METRICS_TOKEN}], indirect=True
)
async def test_metrics_port_needs_the_token_too(server):
    own = f"http://127.0.0.1:{server.app.settings.metrics_port}"
    assert (await get(server, "/metrics", url=own)).code == 401
    assert (await get(server, "/metrics", bearer(METRICS_TOKEN), url=own)).code == 200


# -- what the series say --------------------------------------------------------


async def test_metrics_name_the_build_and_the_process(server):
    samples = await scrape(server.url)
    build = f'collab_build_info{{python="{platform.python_version()}",version="{__version__}"}}'
    assert samples[build] == 1
    assert samples["process_resident_memory_bytes"] > 0
    assert samples["process_open_fds"] > 0
    assert samples["process_start_time_seconds"] > 0
    assert any(name.startswith("python_info{") for name in samples), samples


async def test_metrics_have_no_created_series(server):
    alice = await server.connect("alice")
    await alice.ok("documents:create", {"document_id": "d"})
    text = (await get(server, "/metrics")).body.decode()
    assert "collab_events_total" in text
    assert "_created" not in text


async def test_rooms_count_the_rooms_with_a_member_here(server):
    chat = 'collab_rooms{kind="chat"}'
    document = 'collab_rooms{kind="document"}'
    alice = await server.connect("alice")
    bob = await server.connect("bob")
    chat_id = (await alice.ok("chat:create", {"title": "t", "members": ["bob"]}))["chat"]["id"]
    await alice.ok("documents:create", {"document_id": "d"})
    assert {k: v for k, v in (await scrape(server.url)).items()
            if k.startswith("collab_rooms")} == {chat: 0, document: 0}
    await alice.ok("chat:join", {"chat_id": chat_id})
    assert (await scrape(server.url))[chat] == 1
    await bob.ok("chat:join", {"chat_id": chat_id})
    assert (await scrape(server.url))[chat] == 1  # rooms, not members
    await alice.ok("documents:join", {"document_id": "d"})
    assert (await scrape(server.url))[document] == 1
    await alice.ok("chat:leave", {"chat_id": chat_id})
    assert (await scrape(server.url))[chat] == 1  # bob is still there
    await alice.ok("documents:leave", {"document_id": "d"})
    assert (await scrape(server.url))[document] == 0
    await bob.disconnect()
    assert await scraped(server.url, chat, 0) == 0


async def test_broadcasts_are_counted_once_by_event(server):
    alice = await server.connect("alice")
    bob = await server.connect("bob")
    carol = await server.connect("carol")
    members = ["bob", "carol"]
    chat_id = (await alice.ok("chat:create", {"title": "t", "members": members}))["chat"]["id"]
    for client in (alice, bob, carol):
        await client.ok("chat:join", {"chat_id": chat_id})
    before = await scrape(server.url)
    await alice.ok("chat:message", {"chat_id": chat_id, "content": "hi"})
    await bob.next("chat:message")
    await carol.next("chat:message")
    await alice.fails("made:up", {}, "INVALID_INPUT")
    after = await scrape(server.url)
    series = 'collab_broadcasts_total{event="chat:message"}'
    assert after[series] - before[series] == 1  # one broadcast, three recipients
    assert before['collab_broadcasts_total{event="user:joined"}'] == 3  # one per join
    events = {k for k in after if k.startswith("collab_broadcasts_total")}
    assert events == {f'collab_broadcasts_total{{event="{e}"}}' for e in
                      ("chat:message", "chat:typing", "documents:updated",
                       "documents:yupdate", "documents:awareness", "user:joined",
                       "user:left", "other")}


def disconnects(reason: str) -> str:
    return f'collab_disconnects_total{{reason="{reason}"}}'


async def test_a_client_disconnect_is_counted_as_such(server):
    # (python-socketio's client closes its WebSocket before its DISCONNECT is written:
    # the server sees a transport close, hence a raw peer here)
    raw = await RawSocket.connect(server.url, make_token("alice"))
    try:
        await raw.send("1")  # Socket.IO DISCONNECT
        assert await scraped(server.url, disconnects("client"), 1) == 1
    finally:
        await raw.close()
    samples = await scrape(server.url)
    assert samples[disconnects("server")] == 0
    assert samples[disconnects("transport_close")] == 0


@pytest.mark.parametrize("settings", [{"jwt_leeway": 0}], indirect=True)
async def test_a_server_disconnect_is_counted_as_such(server):
    alice = await server.connect("alice", ttl=2)  # the server ends it when it expires
    assert (await alice.next("error"))["code"] == "UNAUTHORIZED"
    assert await scraped(server.url, disconnects("server"), 1) == 1
    assert (await scrape(server.url))[disconnects("client")] == 0


async def test_a_dropped_transport_is_counted_as_such(server):
    raw = await RawSocket.connect(server.url, make_token("alice"))
    await raw.session.close()  # the TCP connection goes, no Socket.IO or Engine.IO goodbye
    assert await scraped(server.url, disconnects("transport_close"), 1) == 1
    assert (await scrape(server.url))[disconnects("client")] == 0


@pytest.mark.parametrize("settings", [{"ping_interval": 0.1, "ping_timeout": 0.1}],
                         indirect=True)
async def test_a_ping_timeout_is_counted_as_such(server):
    # long-polling: a silent WebSocket ends by Engine.IO's read timeout (interval plus
    # timeout, a transport close) as often as by the ping check
    raw = await RawPolling.connect(server.url, make_token("alice"))
    try:  # never polls again, so never answers a ping
        assert await scraped(server.url, disconnects("ping_timeout"), 1) == 1
    finally:
        await raw.session.close()
