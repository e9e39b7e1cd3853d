"""/healthz, /readyz and /metrics on the Socket.IO port."""

from __future__ import annotations

import json
import logging

import pytest
from harness import make_settings
from services import free_port
from tornado.httpclient import AsyncHTTPClient

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
