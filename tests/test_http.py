"""/healthz, /readyz and /metrics on the Socket.IO port."""

from __future__ import annotations

import json

from tornado.httpclient import AsyncHTTPClient


async def get(server, path):
    return await AsyncHTTPClient().fetch(server.url + path, raise_error=False)


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
