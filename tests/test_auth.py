"""Authentication (PROTOCOL.md, "Authentication"): the handshake, the session, origins,
token expiry and ``auth:refresh``, with real clients against a real server."""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from harness import SECRET, WAIT, leftovers, make_settings, make_token, settled
from rawsocket import RawSocket

from collab.auth import MAX_TOKEN_CHARS
from collab.packet import MAX_CONNECT_CHARS
from collab.sioserver import MAX_REFUSED_CONNECTS

OTHER_SECRET = "not-the-server-secret-0123456789-abcdef"
ISSUER = "https://issuer.example"
AUDIENCE = "collab"
ALLOWED_ORIGIN = "https://app.example"
FOREIGN_ORIGIN = "https://evil.example"
TRANSPORTS = ["websocket", "polling"]

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_EC_KEY = ec.generate_private_key(ec.SECP256R1())


def public_pem(private_key: Any) -> str:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


# settings overrides, applied through the local ``settings`` fixture (indirect parametrization)
ISS_AUD = {"jwt_issuer": ISSUER, "jwt_audience": AUDIENCE}
LEEWAY = {"jwt_leeway": 30}
RS256_ONLY = {"jwt_algorithms": ["RS256"], "jwt_public_key": public_pem(RSA_KEY)}
HS256_AND_RS256 = {"jwt_algorithms": ["HS256", "RS256"], "jwt_public_key": public_pem(RSA_KEY)}
ES256_ONLY = {"jwt_algorithms": ["ES256"], "jwt_public_key": public_pem(EC_KEY)}
# python-engineio leaves a long-poll GET pending after the client's CLOSE until
# ping_interval + ping_timeout, and python-socketio's client waits for it on disconnect (30 s
# with the defaults); short pings keep the polling tests fast.
QUICK_POLL = {"ping_interval": 0.5, "ping_timeout": 1}
ORIGINS = {"cors_origins": [ALLOWED_ORIGIN], **QUICK_POLL}


@pytest.fixture
def settings(request: pytest.FixtureRequest):
    """Test settings plus the overrides a test parametrizes ``settings`` with."""
    return make_settings(**getattr(request, "param", {}))


# -- tokens a well-behaved library refuses to make -------------------------------------


def _b64url(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _claims() -> dict[str, Any]:
    return {"sub": "alice", "exp": int(time.time() + 3600)}


def signed(header: dict[str, Any], claims: dict[str, Any]) -> str:
    """HS256 over any header and claims, with the server's secret: the signature is good."""
    signing_input = f"{_b64url(header)}.{_b64url(claims)}"
    digest = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256)
    signature = base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
    return f"{signing_input}.{signature}"


def unsigned_token() -> str:
    """``alg: none`` with an empty signature."""
    return f"{_b64url({'alg': 'none', 'typ': 'JWT'})}.{_b64url(_claims())}."


def hs256_keyed_with_public_key() -> str:
    """The classic algorithm-confusion token: HMAC'd with the server's RSA *public* key."""
    signing_input = f"{_b64url({'alg': 'HS256', 'typ': 'JWT'})}.{_b64url(_claims())}"
    digest = hmac.new(public_pem(RSA_KEY).encode(), signing_input.encode(), hashlib.sha256)
    signature = base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
    return f"{signing_input}.{signature}"


# -- handshakes (kwargs of Harness.connect / Harness.refused) ----------------------------


def with_token(token: Any, **kwargs: Any) -> dict[str, Any]:
    return {"auth": {"token": token}, **kwargs}


def with_bearer(token: str) -> dict[str, Any]:
    return {"auth": None, "headers": {"Authorization": f"Bearer {token}"}}


Handshake = Callable[[], dict[str, Any]]


# -- server-side checks ---------------------------------------------------------------


def refused_count(server) -> float:
    return server.app.metrics.registry.get_sample_value(
        "collab_connects_refused_total", {"code": "UNAUTHORIZED"}) or 0.0


def assert_nothing_registered(server) -> None:
    assert server.app.connections == {}
    assert server.app.registry.connection_count() == 0
    assert server.app.metrics.registry.get_sample_value("collab_connections") == 0


def assert_connected_as(server, client, user_id: str = "alice") -> None:
    assert client.sio.connected
    assert list(server.app.connections) == [client.sid]
    assert server.app.connections[client.sid].user_id == user_id
    assert server.app.registry.connection_count() == 1


def on_disconnect(client) -> asyncio.Event:
    """Set when the server drops ``client``."""
    gone = asyncio.Event()
    client.sio.on("disconnect", lambda *_: gone.set())
    return gone


def parse_iso(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


# -- the handshake ---------------------------------------------------------------------

ACCEPTED = [
    pytest.param({}, lambda: with_token(make_token()), id="auth-token"),
    pytest.param({}, lambda: with_bearer(make_token()), id="bearer-header"),
    pytest.param(QUICK_POLL, lambda: with_token(make_token(), transports=["polling"]),
                 id="polling"),
    pytest.param(ISS_AUD, lambda: with_token(make_token(iss=ISSUER, aud=AUDIENCE)),
                 id="right-issuer-and-audience"),
    pytest.param(LEEWAY, lambda: with_token(make_token(ttl=-2)), id="expired-within-leeway"),
    pytest.param(RS256_ONLY, lambda: with_token(make_token(key=RSA_KEY, algorithm="RS256")),
                 id="rs256"),
    pytest.param(ES256_ONLY, lambda: with_token(make_token(key=EC_KEY, algorithm="ES256")),
                 id="es256"),
]

# (settings, handshake, a word the human-readable reason must contain)
REFUSED = [
    pytest.param({}, lambda: {"auth": None}, "required", id="no-auth"),
    pytest.param({}, lambda: {"auth": {}}, "required", id="auth-without-token"),
    pytest.param({}, lambda: with_token(42), "required", id="token-not-a-string"),
    pytest.param({}, lambda: with_token("abc"), "Malformed", id="malformed"),
    pytest.param({}, lambda: with_token(make_token(ttl=-60)), "expired", id="expired"),
    pytest.param({}, lambda: with_token(make_token(key=OTHER_SECRET)), "signature", id="forged"),
    pytest.param({}, lambda: with_bearer(make_token(key=OTHER_SECRET)), "signature",
                 id="forged-bearer-header"),
    pytest.param({}, lambda: with_token(unsigned_token()), "algorithm", id="alg-none"),
    pytest.param({}, lambda: with_token(make_token(None)), "sub", id="no-sub"),
    pytest.param({}, lambda: with_token(make_token("")), "sub", id="empty-sub"),
    pytest.param({}, lambda: with_token(jwt.encode({"sub": "alice"}, SECRET)), "exp",
                 id="no-exp"),
    pytest.param(QUICK_POLL, lambda: with_token(make_token(ttl=-60), transports=["polling"]),
                 "expired", id="expired-over-polling"),
    pytest.param(ISS_AUD, lambda: with_token(make_token(iss=ISSUER, aud="other")), "audience",
                 id="wrong-audience"),
    pytest.param(ISS_AUD, lambda: with_token(make_token(iss=ISSUER)), "aud", id="no-audience"),
    pytest.param(ISS_AUD, lambda: with_token(make_token(iss="https://other", aud=AUDIENCE)),
                 "issuer", id="wrong-issuer"),
    pytest.param(ISS_AUD, lambda: with_token(make_token(aud=AUDIENCE)), "iss", id="no-issuer"),
    pytest.param(LEEWAY, lambda: with_token(make_token(ttl=-60)), "expired",
                 id="expired-beyond-leeway"),
    pytest.param(RS256_ONLY, lambda: with_token(make_token()), "algorithm",
                 id="hs256-when-only-rs256"),
    pytest.param(RS256_ONLY, lambda: with_token(hs256_keyed_with_public_key()), "algorithm",
                 id="hs256-keyed-with-public-key-when-only-rs256"),
    pytest.param(HS256_AND_RS256, lambda: with_token(hs256_keyed_with_public_key()),
                 "signature", id="hs256-keyed-with-public-key-when-both-allowed"),
    pytest.param(RS256_ONLY, lambda: with_token(make_token(key=OTHER_RSA_KEY, algorithm="RS256")),
                 "signature", id="rs256-other-key"),
    pytest.param(ES256_ONLY, lambda: with_token(make_token(key=OTHER_EC_KEY, algorithm="ES256")),
                 "signature", id="es256-other-key"),
]


@pytest.mark.parametrize("settings, handshake", ACCEPTED, indirect=["settings"])
async def test_valid_token_is_accepted(server, handshake: Handshake):
    client = await server.connect(**handshake())
    assert_connected_as(server, client, "alice")


@pytest.mark.parametrize("settings, handshake, reason", REFUSED, indirect=["settings"])
async def test_bad_token_is_refused_with_unauthorized(server, handshake: Handshake, reason: str):
    before = refused_count(server)
    error = await server.refused(**handshake())
    assert error is not None, "no connect_error reached the client"
    # python-socketio hands connect_error {message, data}: socket.io-client's err.message, err.data
    assert error["data"] == {"code": "UNAUTHORIZED", "message": error["message"]}
    assert reason in error["message"]
    assert_nothing_registered(server)
    assert refused_count(server) == before + 1


# -- hostile tokens: refused like any bad token, nothing left behind -------------------

HS256 = {"alg": "HS256", "typ": "JWT"}
LONE_SURROGATE = "\ud800"  # valid JSON ("\\ud800"), not encodable as UTF-8

# (token, a word the reason must contain); each raised something other than PyJWT's
# InvalidTokenError out of the connect handler, or was accepted
HOSTILE = [
    pytest.param(lambda: signed({**HS256, "kid": 1}, _claims()), "header", id="kid-not-a-string"),
    pytest.param(lambda: signed({**HS256, "kid": {"x": 1}}, _claims()), "header",
                 id="kid-an-object"),
    pytest.param(lambda: signed({**HS256, "crit": "b64"}, _claims()), "crit",
                 id="crit-not-a-list"),
    pytest.param(lambda: signed({**HS256, "crit": []}, _claims()), "crit", id="crit-empty"),
    pytest.param(lambda: signed({**HS256, "crit": [7]}, _claims()), "crit",
                 id="crit-not-strings"),
    pytest.param(lambda: signed({**HS256, "crit": ["exp"]}, _claims()), "crit",
                 id="crit-unsupported"),
    pytest.param(lambda: signed({**HS256, "crit": [LONE_SURROGATE]}, _claims()), "crit",
                 id="crit-lone-surrogate"),
    pytest.param(lambda: LONE_SURROGATE, "Malformed", id="token-a-lone-surrogate"),
    pytest.param(lambda: make_token() + LONE_SURROGATE, "Malformed",
                 id="token-ending-in-a-lone-surrogate"),
    pytest.param(lambda: signed(HS256, {**_claims(), "sub": LONE_SURROGATE}), "sub",
                 id="sub-a-lone-surrogate"),
    pytest.param(lambda: signed(HS256, {**_claims(), "name": "x" + LONE_SURROGATE}), "name",
                 id="name-with-a-lone-surrogate"),
    pytest.param(lambda: signed(HS256, {**_claims(), "roles": [LONE_SURROGATE]}), "roles",
                 id="role-a-lone-surrogate"),
    pytest.param(lambda: signed(HS256, {**_claims(), "exp": 10**400}), "exp",
                 id="exp-10**400"),
    pytest.param(lambda: signed(HS256, {**_claims(), "exp": "9" * 400}), "exp",
                 id="exp-a-400-digit-string"),
    pytest.param(lambda: signed(HS256, {**_claims(), "exp": 1e308}), "exp", id="exp-1e308"),
    pytest.param(lambda: signed(HS256, {**_claims(), "exp": 253402300800}), "exp",
                 id="exp-after-the-year-9999"),
]
ATTEMPTS = 5


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    """ERROR records and tracebacks, from our logger or python-socketio's and Engine.IO's."""
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records
            if r.levelno >= logging.ERROR or r.exc_info]


@pytest.mark.parametrize("token, reason", HOSTILE)
async def test_hostile_token_is_unauthorized_and_leaves_nothing(
        server, caplog, token: Callable[[], str], reason: str):
    before = refused_count(server)
    for _ in range(ATTEMPTS):
        error = await server.refused(auth={"token": token()})
        assert error is not None, "no connect_error reached the client"
        assert error["data"] == {"code": "UNAUTHORIZED", "message": error["message"]}
        assert reason in error["message"]
        error["message"].encode("utf-8")  # any encoder can send it: no lone surrogate
    assert await settled(server.app) == {}
    assert errors_logged(caplog) == []
    assert refused_count(server) == before + ATTEMPTS
    await server.connect("alice")  # and the server still serves


@pytest.mark.parametrize("settings", [pytest.param(QUICK_POLL, id="quick-poll")], indirect=True)
@pytest.mark.parametrize("token", [HOSTILE[0].values[0], HOSTILE[7].values[0],
                                   HOSTILE[12].values[0]], ids=["kid", "surrogate", "exp"])
async def test_hostile_token_over_polling_leaves_nothing(server, caplog, token):
    for _ in range(ATTEMPTS):
        error = await server.refused(auth={"token": token()}, transports=["polling"])
        assert error["data"]["code"] == "UNAUTHORIZED"
    assert await settled(server.app) == {}
    assert errors_logged(caplog) == []


async def test_hostile_tokens_retried_on_one_socket_leave_nothing(server, caplog):
    """A raw client may send CONNECT again after a refusal, on the same session, until
    MAX_REFUSED_CONNECTS refusals close it: each try costs a verification."""
    params = list(HOSTILE)
    for start in range(0, len(params), MAX_REFUSED_CONNECTS):
        chunk = params[start:start + MAX_REFUSED_CONNECTS]
        raw = await RawSocket.open(server.url)
        try:
            for tries, param in enumerate(chunk, 1):
                await raw.send("0" + json.dumps({"token": param.values[0]()}))
                packet = await raw.recv()
                assert packet.startswith("4{"), packet  # CONNECT_ERROR
                assert json.loads(packet[1:])["data"]["code"] == "UNAUTHORIZED"
                if tries < MAX_REFUSED_CONNECTS:
                    left = {k: n for k, n in leftovers(server.app).items() if n}
                    # the open Engine.IO session and its environ, nothing per attempt
                    assert left == {"sio environ": 1, "eio sockets": 1}
            if len(chunk) == MAX_REFUSED_CONNECTS:
                await raw.closed(timeout=WAIT)
        finally:
            await raw.close()
    assert await settled(server.app) == {}
    assert errors_logged(caplog) == []


async def test_connect_after_engineio_close_leaves_nothing(server, caplog):
    """Engine.IO CLOSE, then CONNECT on the same WebSocket: the transport still delivers it
    after python-socketio forgot the session; no token is needed to try."""
    for _ in range(ATTEMPTS):
        raw = await RawSocket.open(server.url)
        await raw.ws.send_str("1")  # Engine.IO CLOSE
        await raw.send("0" + json.dumps({"token": make_token("alice")}))
        await raw.ws.send_str("2probe")  # handled after the CONNECT: it has been read
        await raw.close()
    assert await settled(server.app) == {}
    assert errors_logged(caplog) == []


async def test_unexpected_error_while_connecting_is_answered_and_leaves_nothing(
        server, monkeypatch, caplog):
    async def broken(*args: Any) -> None:
        raise RuntimeError("registry blew up")

    monkeypatch.setattr(server.app.registry, "add_connection", broken)
    for _ in range(ATTEMPTS):
        error = await server.refused(auth={"token": make_token()})
        assert error is not None, "no connect_error reached the client"
        assert error["data"]["code"] == "INTERNAL_ERROR"
        assert "blew" not in error["message"]
        error_id = error["data"]["details"]["error_id"]
        assert any(error_id in r.getMessage() and r.exc_info for r in caplog.records)
    assert await settled(server.app) == {}
    monkeypatch.undo()
    await server.connect("alice")


@pytest.mark.parametrize("settings", [pytest.param({"ping_interval": 0.2, "ping_timeout": 0.3},
                                             id="quick-ping")], indirect=True)
async def test_client_gone_during_the_handshake_leaves_nothing(server, monkeypatch, caplog):
    """The registry is slow (a hung Redis) and the client stops answering pings meanwhile:
    Engine.IO ends the session before the connect handler has finished."""
    release = asyncio.Event()
    add_connection = server.app.registry.add_connection

    async def slow(sid: str, user_id: str) -> None:
        await release.wait()
        await add_connection(sid, user_id)

    monkeypatch.setattr(server.app.registry, "add_connection", slow)
    raw = await RawSocket.open(server.url)
    try:
        await raw.send("0" + json.dumps({"token": make_token("alice")}))
        # python-socketio forgets the handshake's environ when the session ends
        deadline = time.monotonic() + WAIT
        while server.app.sio.environ and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert not server.app.sio.environ, "the session did not time out"
        release.set()
        assert await settled(server.app) == {}
    finally:
        await raw.close()
    assert errors_logged(caplog) == []


# -- the session -----------------------------------------------------------------------


@pytest.mark.parametrize("claims, expected", [
    pytest.param({}, {"user_id": "alice", "name": "alice", "roles": []}, id="defaults"),
    pytest.param({"name": "Alice Liddell"},
                 {"user_id": "alice", "name": "Alice Liddell", "roles": []}, id="name-claim"),
    pytest.param({"roles": ["admin"]}, {"user_id": "alice", "name": "alice", "roles": ["admin"]},
                 id="admin-role"),
])
async def test_session_holds_the_identity(server, claims: dict, expected: dict):
    client = await server.connect("alice", **claims)
    session = await server.app.sio.get_session(client.sid)
    assert {key: session[key] for key in expected} == expected


# -- origins ---------------------------------------------------------------------------


@pytest.mark.parametrize("settings", [pytest.param(ORIGINS, id="cors-origins")], indirect=True)
@pytest.mark.parametrize("transport", TRANSPORTS)
class TestOrigin:
    @pytest.mark.parametrize("origin", ["own", ALLOWED_ORIGIN], ids=["own", "configured"])
    async def test_allowed_origin_is_accepted(self, server, transport: str, origin: str):
        origin = server.url if origin == "own" else origin
        client = await server.connect(headers={"Origin": origin}, transports=[transport])
        assert_connected_as(server, client)

    async def test_foreign_origin_is_refused(self, server, transport: str):
        # Engine.IO refuses the HTTP request itself, before any Socket.IO CONNECT, so the
        # client may see a plain ConnectionError without connect_error data.
        await server.refused(auth={"token": make_token()}, headers={"Origin": FOREIGN_ORIGIN},
                             transports=[transport])
        assert_nothing_registered(server)


# The public origin behind a TLS-terminating proxy, as the proxy would forward it; anyone
# else can send the same headers.
PROXIED_ORIGIN = "https://collab.example"
FORWARDED = {"Origin": PROXIED_ORIGIN, "X-Forwarded-Host": "collab.example",
             "X-Forwarded-Proto": "https"}


@pytest.mark.parametrize("transport", TRANSPORTS)
class TestForwardedHeaders:
    @pytest.mark.parametrize("settings", [
        pytest.param(QUICK_POLL, id="no-proxy"),
        pytest.param({**QUICK_POLL, "trusted_proxies": ["10.0.0.0/8"]}, id="another-proxy"),
    ], indirect=True)
    async def test_forged_forwarded_host_is_refused(self, server, transport: str):
        await server.refused(auth={"token": make_token()}, headers=FORWARDED,
                             transports=[transport])
        assert_nothing_registered(server)

    @pytest.mark.parametrize("settings", [
        pytest.param({**QUICK_POLL, "trusted_proxies": ["127.0.0.1"]}, id="address"),
        pytest.param({**QUICK_POLL, "trusted_proxies": ["127.0.0.0/8", "::1"]}, id="network"),
    ], indirect=True)
    async def test_forwarded_host_from_a_trusted_proxy_is_accepted(self, server, transport: str):
        client = await server.connect(headers=FORWARDED, transports=[transport])
        assert_connected_as(server, client)

    @pytest.mark.parametrize("settings", [
        pytest.param({**QUICK_POLL, "trusted_proxies": ["127.0.0.1"]}, id="trusted"),
    ], indirect=True)
    async def test_a_trusted_proxy_wins_over_what_the_client_prepended(self, server,
                                                                      transport: str):
        # a proxy that appends: the client's forged value first, the proxy's own last
        headers = {**FORWARDED, "X-Forwarded-Host": "collab.example, evil.example"}
        await server.refused(auth={"token": make_token()}, headers=headers,
                             transports=[transport])
        headers = {**FORWARDED, "X-Forwarded-Host": "evil.example, collab.example"}
        client = await server.connect(headers=headers, transports=[transport])
        assert_connected_as(server, client)


# -- expiry and auth:refresh -----------------------------------------------------------


async def test_expiring_token_gets_unauthorized_then_disconnect(server):
    client = await server.connect("alice", ttl=2)
    gone = on_disconnect(client)
    error = await client.next("error")
    assert error["code"] == "UNAUTHORIZED" and error["message"]
    await asyncio.wait_for(gone.wait(), WAIT)
    assert_nothing_registered(server)


async def test_refresh_keeps_the_connection_past_the_first_expiry(server):
    first = make_token("alice", ttl=2)
    first_exp = jwt.decode(first, options={"verify_signature": False})["exp"]
    client = await server.connect(token=first)
    # A second connection with the same token and no refresh is the clock: its disconnect
    # says the first token's expiry has passed, without a sleep.
    clock = await server.connect(token=first)
    clock_gone = on_disconnect(clock)

    fresh = make_token("alice", ttl=3600)
    ack = await client.ok("auth:refresh", {"token": fresh})
    fresh_exp = jwt.decode(fresh, options={"verify_signature": False})["exp"]
    assert parse_iso(ack["expires_at"]).timestamp() == fresh_exp

    await asyncio.wait_for(clock_gone.wait(), WAIT)
    assert time.time() >= first_exp
    await client.ok("chat:create", {})
    assert client.pending("error") == []
    assert_connected_as(server, client)


@pytest.mark.parametrize("token, code", [
    pytest.param(lambda: make_token("bob"), "PERMISSION_DENIED", id="another-user"),
    pytest.param(lambda: "garbage", "UNAUTHORIZED", id="garbage"),
    pytest.param(lambda: make_token("alice", ttl=-60), "UNAUTHORIZED", id="expired"),
])
async def test_failed_refresh_keeps_the_connection_and_user(
        server, token: Callable[[], str], code: str):
    client = await server.connect("alice")
    await client.fails("auth:refresh", {"token": token()}, code)
    ack = await client.ok("chat:create", {})
    assert ack["chat"]["created_by"] == "alice"
    assert_connected_as(server, client, "alice")


YEAR_9999 = 253402300799  # 9999-12-31T23:59:59Z, the latest exp accepted
# exps PyJWT accepts (int(exp) is in the future) that no timer or datetime can hold
EXTREME_EXP = [10**400, "9" * 400, 1e308, 2**63, YEAR_9999 + 1]


async def test_refresh_with_an_extreme_exp_is_unauthorized_and_changes_nothing(server):
    client = await server.connect("alice", ttl=2)
    gone = on_disconnect(client)
    conn = server.app.connections[client.sid]
    identity, expiry = conn.identity, conn.expiry
    for exp in EXTREME_EXP:
        error = await client.fails("auth:refresh", {"token": signed(
            {"alg": "HS256", "typ": "JWT"}, {"sub": "alice", "exp": exp})}, "UNAUTHORIZED")
        assert "exp" in error["message"]
        assert conn.identity is identity and conn.expiry is expiry
    # the first token's expiry still holds
    error = await client.next("error")
    assert error["code"] == "UNAUTHORIZED" and "expired" in error["message"]
    await asyncio.wait_for(gone.wait(), WAIT)
    assert_nothing_registered(server)


async def test_refresh_to_the_latest_exp_arms_a_bounded_timer(server):
    client = await server.connect("alice")
    token = make_token("alice", ttl=YEAR_9999 - time.time())
    ack = await client.ok("auth:refresh", {"token": token})
    assert ack["expires_at"].startswith("9999-12-31T23:59:")
    conn = server.app.connections[client.sid]
    loop = asyncio.get_running_loop()
    assert 0 < conn.expiry.when() - loop.time() <= 24 * 3600  # it wakes and re-arms
    await client.ok("chat:create", {})


async def test_capped_expiry_timer_rearms_until_the_token_expires(server, monkeypatch):
    import collab.app

    monkeypatch.setattr(collab.app, "MAX_EXPIRY_DELAY", 0.1)  # wakes several times first
    token = make_token("alice", ttl=1.5)
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    client = await server.connect(token=token)
    gone = on_disconnect(client)
    error = await client.next("error")
    assert error["code"] == "UNAUTHORIZED"
    assert time.time() >= exp  # not dropped early by a timer that woke before the expiry
    await asyncio.wait_for(gone.wait(), WAIT)


async def test_a_token_over_the_length_limit_is_refused_before_it_is_parsed(server, caplog):
    # a 700 KB token cost PyJWT 100 ms to refuse, a denial of service without a key
    token = make_token("alice", pad="x" * MAX_TOKEN_CHARS)
    assert len(token) > MAX_TOKEN_CHARS
    # (in a CONNECT packet it would pass that packet's own limit: it comes as a header)
    refused = await server.refused(headers={"Authorization": f"Bearer {token}"})
    data = refused.get("data", refused)  # (python-socketio's client nests it here)
    assert data["code"] == "UNAUTHORIZED" and "longer than" in data["message"]
    assert await settled(server.app) == {}
    assert errors_logged(caplog) == []


async def test_a_connect_packet_over_the_limit_closes_the_session(server, caplog):
    raw = await RawSocket.open(server.url)
    try:
        await raw.send("0" + json.dumps({"token": "x" * MAX_CONNECT_CHARS}))
        # Engine.IO's CLOSE alone, no CONNECT_ERROR: nothing was decoded
        assert await raw.closed(timeout=WAIT) == ["1"]
    finally:
        await raw.close()
    assert await settled(server.app) == {}
    assert errors_logged(caplog) == []


# -- the verifier's prepared keys and segment check (collab/auth.py) ---------------------


def _segment_variants(token: str) -> list[str]:
    """The token with each segment padded, junked, shortened to a bad length, or given
    non-canonical trailing bits: what PyJWT's own segment check decides."""
    parts = token.split(".")
    out = []
    for i in range(3):
        for change in (lambda s: s + "=" * (-len(s) % 4),  # padded: accepted by PyJWT
                       lambda s: s + "==",
                       lambda s: s[:-1] + "!",
                       lambda s: s + "A" if len(s) % 4 == 0 else s[:-(len(s) % 4) + 1],
                       lambda s: s[:-1] + chr(ord(s[-1]) ^ 1)):  # other trailing bits
            changed = list(parts)
            changed[i] = change(parts[i])
            out.append(".".join(changed))
    return out


def _plain_pyjwt(token: str, key: Any, algorithm: str) -> str:
    try:
        jwt.get_unverified_header(token)
        jwt.decode(token, key, algorithms=[algorithm], options={"require": ["sub", "exp"]})
    except jwt.PyJWTError as exc:
        return type(exc).__name__
    return "accepted"


def _ours(verifier: Any, token: str) -> str:
    from collab.errors import Unauthorized

    try:
        verifier.verify(token)
    except Unauthorized as exc:
        return exc.message
    return "accepted"


@pytest.mark.parametrize(("overrides", "key", "algorithm"), [
    ({}, SECRET, "HS256"),
    (RS256_ONLY, RSA_KEY, "RS256"),
], ids=["HS256", "RS256"])
def test_the_verifier_decides_each_segment_as_pyjwt_does(overrides, key, algorithm):
    from collab.auth import TokenVerifier

    verifier = TokenVerifier(make_settings(**overrides))
    public = public_pem(RSA_KEY) if algorithm == "RS256" else key
    expected = {"accepted": "accepted", "DecodeError": "Malformed token",
                "InvalidSignatureError": "Token signature is invalid"}
    for token in [make_token(key=key, algorithm=algorithm),
                  *_segment_variants(make_token(key=key, algorithm=algorithm))]:
        for _ in range(2):  # the second time with the key prepared by the first
            assert _ours(verifier, token) == expected[_plain_pyjwt(token, public, algorithm)], \
                token


def test_the_prepared_secret_is_the_servers_alone():
    """Only the configured secret skips PyJWT's key checks: any other key passed to the
    algorithm is checked as PyJWT checks it."""
    from collab.auth import PreparedHMAC, TokenVerifier

    verifier = TokenVerifier(make_settings())
    hs256 = verifier._jwt.jws.get_algorithm_by_name("HS256")
    assert isinstance(hs256, PreparedHMAC)
    assert hs256.prepare_key(SECRET) == SECRET.encode()
    with pytest.raises(jwt.InvalidKeyError):
        hs256.prepare_key(public_pem(RSA_KEY))
    assert _ours(verifier, make_token(key=OTHER_SECRET)) == "Token signature is invalid"
    assert _ours(verifier, make_token()) == "accepted"
