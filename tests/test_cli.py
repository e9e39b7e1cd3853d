"""The command line as a new user meets it: ``collab serve`` and ``collab token``."""

from __future__ import annotations

import asyncio
import stat

import jwt
import pytest
import socketio
from process import CollabProcess, collab

from collab.config import ConfigError, load_settings


@pytest.fixture
def node(tmp_path):
    proc = CollabProcess(tmp_path)
    yield proc
    proc.kill()


async def connect(node, user_id):
    client = socketio.AsyncClient(reconnection=False)
    await client.connect(node.url, auth={"token": node.token(user_id)},
                         transports=["websocket"], wait_timeout=5)
    return client


async def test_fresh_directory_serve_then_token(node, tmp_path):
    node.start()
    secret = tmp_path / "data" / "jwt_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert (tmp_path / "data" / "collab.db").exists()

    token = node.token("alice", "--name", "Alice", "--role", "admin", "--ttl", "60")
    claims = jwt.decode(token, secret.read_text().strip(), algorithms=["HS256"])
    assert claims["sub"] == "alice" and claims["name"] == "Alice"
    assert claims["roles"] == ["admin"] and claims["exp"] - claims["iat"] == 60

    client = await connect(node, "alice")
    ack = await client.call("documents:create", {"document_id": "hello"}, timeout=5)
    assert ack["ok"] is True
    await client.disconnect()


async def test_sigterm_disconnects_clients_and_exits_cleanly(node):
    node.start()
    client = await connect(node, "alice")
    gone = asyncio.Event()
    client.on("disconnect", lambda *_: gone.set())
    code = await asyncio.get_running_loop().run_in_executor(None, node.terminate)
    assert code == 0
    await asyncio.wait_for(gone.wait(), 10)
    assert "shutting down" in node.output() and "collab stopped" in node.output()


async def test_everything_acknowledged_survives_a_restart(node):
    node.start()
    client = await connect(node, "alice")
    assert (await client.call("documents:create", {"document_id": "d", "content": "v0"}))["ok"]
    assert (await client.call("documents:update",
                              {"document_id": "d", "content": "v1", "version": 1}))["ok"]
    assert (await client.call("chat:create", {"chat_id": "c"}))["ok"]
    for i in range(5):
        ack = await client.call("chat:message", {"chat_id": "c", "content": f"m{i}"})
        assert ack["message"]["seq"] == i + 1
    await client.disconnect()
    node.kill()  # no graceful goodbye: acknowledged means already durable

    node.start()
    client = await connect(node, "alice")
    doc = await client.call("documents:join", {"document_id": "d"})
    assert doc["document"]["content"] == "v1" and doc["document"]["version"] == 1
    chat = await client.call("chat:join", {"chat_id": "c"})
    assert [m["content"] for m in chat["messages"]] == [f"m{i}" for i in range(5)]
    await client.disconnect()


def test_bad_setting_fails_at_start_naming_it(tmp_path):
    result = collab("serve", cwd=tmp_path, env={"COLLAB_PORT": "eighty"})
    assert result.returncode == 2
    assert "COLLAB_PORT" in result.stderr


def test_token_without_a_secret_says_what_to_do(tmp_path):
    result = collab("token", "alice", cwd=tmp_path)
    assert result.returncode == 2
    assert "COLLAB_JWT_SECRET" in result.stderr and "collab serve" in result.stderr


def test_port_in_use_is_a_clear_error(node, tmp_path):
    node.start()
    result = collab("serve", "--port", str(node.port), cwd=tmp_path, timeout=30)
    assert result.returncode == 1
    assert "cannot start" in result.stderr


def test_settings_precedence_defaults_file_env_flags(tmp_path):
    config = tmp_path / "collab.toml"
    config.write_text('port = 9001\nhost = "0.0.0.0"\nmax_message_chars = 5\n')
    settings = load_settings(str(config), env={"COLLAB_PORT": "9002"}, overrides={"host": "::1"})
    assert (settings.port, settings.host, settings.max_message_chars) == (9002, "::1", 5)
    assert settings.rate_limit_burst == 100  # untouched default
    assert load_settings(env={"COLLAB_CONFIG": str(config)}).port == 9001


@pytest.mark.parametrize("text, named", [
    ("prot = 1\n", "prot"),
    ('port = "x"\n', "port"),
    ("port = [\n", "not valid TOML"),
])
def test_bad_config_file_names_the_problem(tmp_path, text, named):
    config = tmp_path / "collab.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=named):
        load_settings(str(config), env={})


@pytest.mark.parametrize("env, named", [
    ({"COLLAB_STORAGE_URL": "postgres://x"}, "COLLAB_STORAGE_URL"),
    ({"COLLAB_REGISTRY_URL": "etcd://x"}, "COLLAB_REGISTRY_URL"),
    ({"COLLAB_JWT_ALGORITHMS": "none"}, "COLLAB_JWT_ALGORITHMS"),
    ({"COLLAB_JWT_ALGORITHMS": "RS256"}, "COLLAB_JWT_PUBLIC_KEY"),
    ({"COLLAB_JWT_SECRET": "short"}, "COLLAB_JWT_SECRET"),
    ({"COLLAB_MAX_MESSAGE_CHARS": "0"}, "COLLAB_MAX_MESSAGE_CHARS"),
    ({"COLLAB_RATE_LIMIT_BURST": "-1"}, "COLLAB_RATE_LIMIT_BURST"),
    ({"COLLAB_MAX_CONNECTIONS_PER_USER": "-1"}, "COLLAB_MAX_CONNECTIONS_PER_USER"),
    ({"COLLAB_USER_RATE_LIMIT_PER_SECOND": "-5"}, "COLLAB_USER_RATE_LIMIT_PER_SECOND"),
    ({"COLLAB_USER_RATE_LIMIT_BURST": "0"}, "COLLAB_USER_RATE_LIMIT_BURST"),
    ({"COLLAB_WEBSOCKET_COMPRESSION": "maybe"}, "COLLAB_WEBSOCKET_COMPRESSION"),
])
def test_bad_settings_are_named(env, named):
    env = {"COLLAB_JWT_SECRET": "x" * 32, **env}
    with pytest.raises(ConfigError, match=named):
        load_settings(env=env)


@pytest.mark.parametrize("env, named", [
    ({"COLLAB_TRUSTED_PROXIES": "10.0.0.1,proxy.internal"}, "COLLAB_TRUSTED_PROXIES"),
    ({"COLLAB_HEADER_TIMEOUT": "0"}, "COLLAB_HEADER_TIMEOUT"),
    ({"COLLAB_BODY_TIMEOUT": "-1"}, "COLLAB_BODY_TIMEOUT"),
    ({"COLLAB_MAX_CONNECTIONS": "0"}, "COLLAB_MAX_CONNECTIONS"),
    ({"COLLAB_MAX_CONNECTIONS_PER_IP": "0"}, "COLLAB_MAX_CONNECTIONS_PER_IP"),
    ({"COLLAB_METRICS_PORT": "65536"}, "COLLAB_METRICS_PORT"),
    ({"COLLAB_METRICS_PORT": "8000"}, "COLLAB_METRICS_PORT"),  # the main port
])
def test_bad_connection_settings_are_named(env, named):
    env = {"COLLAB_JWT_SECRET": "x" * 32, **env}
    with pytest.raises(ConfigError, match=named):
        load_settings(env=env)


@pytest.mark.parametrize("token", ["short-secret", "a secret with spaces in it"])
def test_a_bad_metrics_token_is_named_and_never_echoed(token):
    env = {"COLLAB_JWT_SECRET": "x" * 32, "COLLAB_METRICS_TOKEN": token}
    with pytest.raises(ConfigError, match="COLLAB_METRICS_TOKEN") as raised:
        load_settings(env=env)
    assert token not in str(raised.value)


def test_trusted_proxies_take_addresses_and_networks():
    env = {"COLLAB_JWT_SECRET": "x" * 32, "COLLAB_TRUSTED_PROXIES": "127.0.0.1, 10.0.0.0/8,::1"}
    settings = load_settings(env=env)
    assert settings.trusted_proxies == ["127.0.0.1", "10.0.0.0/8", "::1"]


def test_example_config_documents_every_setting_with_its_default():
    from pathlib import Path

    from collab.config import Settings, tomllib

    example = Path(__file__).parent.parent / "config" / "collab.example.toml"
    keys = set(tomllib.loads(example.read_text()))
    assert keys == set(Settings.model_fields)
    from_file = load_settings(str(example), env={})
    defaults = load_settings(env={})
    for name in Settings.model_fields:
        if name != "node_id":  # derived from the host and pid when empty
            assert getattr(from_file, name) == getattr(defaults, name), name


def test_unreachable_store_at_start_is_one_clear_line(tmp_path):
    from services import free_port

    env = {"COLLAB_STORAGE_URL": f"mongodb://127.0.0.1:{free_port()}/collab",
           "COLLAB_MONGODB_SERVER_SELECTION_TIMEOUT_MS": "300"}
    result = collab("serve", cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert "cannot start" in result.stderr and "Traceback" not in result.stderr
