"""The command line as a new user meets it: ``collab serve`` and ``collab token``."""

from __future__ import annotations

import asyncio
import re
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


async def test_token_url_signs_in_to_the_web_app_at_the_configured_address(node, tmp_path):
    node.start()
    url = node.token("alice", "--url", "--ttl", "60", "--port", str(node.port))
    base, _, token = url.partition("/#token=")
    assert base == f"http://127.0.0.1:{node.port}"  # the configured host and port
    secret = (tmp_path / "data" / "jwt_secret").read_text().strip()
    assert jwt.decode(token, secret, algorithms=["HS256"])["sub"] == "alice"
    client = socketio.AsyncClient(reconnection=False)
    await client.connect(base, auth={"token": token}, transports=["websocket"], wait_timeout=5)
    await client.disconnect()


@pytest.mark.parametrize("host, shown", [
    ("0.0.0.0", "127.0.0.1"),  # listening everywhere: browse to this machine
    ("::", "[::1]"),
    ("::1", "[::1]"),
    ("10.1.2.3", "10.1.2.3"),
    ("collab.example.org", "collab.example.org"),
])
def test_token_url_uses_an_address_a_browser_can_open(tmp_path, host, shown):
    env = {"COLLAB_JWT_SECRET": "x" * 32, "COLLAB_HOST": host, "COLLAB_PORT": "8000"}
    result = collab("token", "bob", "--url", "--port", "8123", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(rf"http://{re.escape(shown)}:8123/#token=[\w-]+\.[\w-]+\.[\w-]+\n",
                        result.stdout)


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
    line = assert_one_line(result, f"cannot listen on 127.0.0.1:{node.port} (COLLAB_HOST and "
                           "--port): Address already in use", code=1)
    assert "cannot start" in line


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

    url = f"mongodb://app:hunter2@127.0.0.1:{free_port()}/collab"
    env = {"COLLAB_STORAGE_URL": url, "COLLAB_MONGODB_SERVER_SELECTION_TIMEOUT_MS": "300"}
    result = collab("serve", cwd=tmp_path, env=env)
    line = assert_one_line(result, "(COLLAB_STORAGE_URL)", "hunter2", code=1)
    assert f"cannot start: cannot open the store {url.replace('hunter2', '***')} " in line


# -- every bad setting: one line naming it, exit 2, no traceback --------------------------

def _public_key(kind: str = "rsa", private: bool = False) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    key = (rsa.generate_private_key(public_exponent=65537, key_size=2048) if kind == "rsa"
           else ec.generate_private_key(ec.SECP256R1()))
    if private:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode()
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


RS256 = {"COLLAB_JWT_ALGORITHMS": "RS256"}

BAD_SETTINGS = [
    # (environment, the name the line must give, text that must not appear)
    ({"COLLAB_STORAGE_URL": "sqlite://foo.db"}, "COLLAB_STORAGE_URL", None),
    ({"COLLAB_STORAGE_URL": "mongodb://"}, "COLLAB_STORAGE_URL", None),
    ({"COLLAB_STORAGE_URL": "postgres://app:hunter2@db/x"}, "COLLAB_STORAGE_URL", "hunter2"),
    ({"COLLAB_STORAGE_URL": "mongodb://app:hunter2@db/x?readPreference=sideways"},
     "COLLAB_STORAGE_URL", "hunter2"),
    ({"COLLAB_STORAGE_URL": "mongodb+srv://app:hunter2@cluster.example.net:27017/x"},
     "COLLAB_STORAGE_URL", "hunter2"),
    ({"COLLAB_REGISTRY_URL": "redis://h:notaport/0"}, "COLLAB_REGISTRY_URL", None),
    ({"COLLAB_REGISTRY_URL": "redis://:hunter2@h/x"}, "COLLAB_REGISTRY_URL", "hunter2"),
    ({"COLLAB_REGISTRY_URL": "etcd://:hunter2@h"}, "COLLAB_REGISTRY_URL", "hunter2"),
    ({"COLLAB_REGISTRY_URL": "redis+cluster://:hunter2@"}, "COLLAB_REGISTRY_URL", "hunter2"),
    ({"COLLAB_REGISTRY_URL": "redis+cluster://:hunter2@h1:7000,,h2:7001"},
     "COLLAB_REGISTRY_URL", "hunter2"),
    ({"COLLAB_REGISTRY_URL": "redis+cluster://h1:70000"}, "COLLAB_REGISTRY_URL", None),
    ({"COLLAB_REGISTRY_URL": "redis+cluster://h1:notaport,h2:7001"}, "COLLAB_REGISTRY_URL", None),
    ({"COLLAB_REGISTRY_URL": "rediss+cluster://:hunter2@h1:7000/1"},
     "COLLAB_REGISTRY_URL", "hunter2"),
    ({"COLLAB_REGISTRY_URL": "redis+cluster://:hunter2@h1:7000?db=2"},
     "COLLAB_REGISTRY_URL", "hunter2"),
    ({"COLLAB_REGISTRY_URL": "redis+cluster://:hunter2@h1:7000?socket_timeout=soon"},
     "COLLAB_REGISTRY_URL", "hunter2"),
    ({"COLLAB_REGISTRY_URL": "redis+cluster://:hunter2@h1:7000?no_such_option=1"},
     "COLLAB_REGISTRY_URL", "hunter2"),
    ({"COLLAB_REGISTRY_URL": "redis+clusterx://h1:7000"}, "COLLAB_REGISTRY_URL", None),
    ({"COLLAB_MONGODB_READ_PREFERENCE": "sideways"}, "COLLAB_MONGODB_READ_PREFERENCE", None),
    ({"COLLAB_MONGODB_WRITE_CONCERN": "two please"}, "COLLAB_MONGODB_WRITE_CONCERN", None),
    ({"COLLAB_MONGODB_SERVER_SELECTION_TIMEOUT_MS": "0"},
     "COLLAB_MONGODB_SERVER_SELECTION_TIMEOUT_MS", None),
    ({"COLLAB_STORAGE_URL": "mongodb://db/x?w=1", "COLLAB_MONGODB_WRITE_CONCERN": "majority"},
     "COLLAB_MONGODB_WRITE_CONCERN", None),
    ({**RS256}, "COLLAB_JWT_PUBLIC_KEY", None),
    ({**RS256, "COLLAB_JWT_PUBLIC_KEY": "garbage"}, "COLLAB_JWT_PUBLIC_KEY", None),
    ({"COLLAB_JWT_ALGORITHMS": "ES256", "COLLAB_JWT_PUBLIC_KEY": "<rsa>"},
     "COLLAB_JWT_PUBLIC_KEY", None),
    ({**RS256, "COLLAB_JWT_PUBLIC_KEY": "<rsa-private>"}, "COLLAB_JWT_PUBLIC_KEY", "<body>"),
    ({**RS256, "COLLAB_JWT_PUBLIC_KEY_FILE": "/nonexistent/key.pem"},
     "COLLAB_JWT_PUBLIC_KEY_FILE", None),
    ({"COLLAB_JWT_ALGORITHMS": "HS256,none"}, "COLLAB_JWT_ALGORITHMS", None),
    ({"COLLAB_JWT_SECRET": "hunter2-short"}, "COLLAB_JWT_SECRET", "hunter2"),
    ({"COLLAB_METRICS_TOKEN": "hunter2 short"}, "COLLAB_METRICS_TOKEN", "hunter2"),
    ({"COLLAB_PROT": "9"}, "COLLAB_PROT", None),
    ({"COLLAB_PORT": "eighty"}, "COLLAB_PORT", None),
    ({"COLLAB_PORT": "70000"}, "COLLAB_PORT", None),
    ({"COLLAB_HOST": "999.1.1.1"}, "COLLAB_HOST", None),
    ({"COLLAB_LOG_LEVEL": "LOUD"}, "COLLAB_LOG_LEVEL", None),
    ({"COLLAB_LOG_FORMAT": "xml"}, "COLLAB_LOG_FORMAT", None),
    ({"COLLAB_HISTORY_LIMIT": "500"}, "COLLAB_HISTORY_LIMIT", None),
    ({"COLLAB_MAX_MESSAGE_CHARS": "0"}, "COLLAB_MAX_MESSAGE_CHARS", None),
    ({"COLLAB_WEBSOCKET_COMPRESSION": "maybe"}, "COLLAB_WEBSOCKET_COMPRESSION", None),
    ({"COLLAB_TRUSTED_PROXIES": "proxy.internal"}, "COLLAB_TRUSTED_PROXIES", None),
    ({"COLLAB_METRICS_PORT": "8000"}, "COLLAB_METRICS_PORT", None),
]


def assert_one_line(result, named: str, hidden: str | None = None, code: int = 2) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert named in lines[0] and "Traceback" not in result.stderr, result.stderr
    assert result.returncode == code, result.stderr
    if hidden is not None:
        assert hidden not in result.stderr and hidden not in result.stdout, result.stderr
    return lines[0]


@pytest.mark.parametrize("env, named, hidden", BAD_SETTINGS,
                         ids=[next(iter(e)) + "=" + next(iter(e.values())) for e, _, _ in
                              BAD_SETTINGS])
def test_every_bad_setting_is_one_line_naming_it(tmp_path, env, named, hidden):
    keys = {"<rsa>": _public_key(), "<rsa-private>": _public_key(private=True)}
    env = {k: keys.get(v, v) for k, v in env.items()}
    if hidden == "<body>":  # any line of the private key's base64 body
        hidden = env["COLLAB_JWT_PUBLIC_KEY"].splitlines()[1][:16]
    result = collab("serve", cwd=tmp_path, env=env, timeout=20)
    line = assert_one_line(result, named, hidden)
    assert line.startswith(f"collab: configuration error: {named}: ")
    assert not (tmp_path / "data").exists()  # nothing was started, nothing created


@pytest.mark.parametrize("text, named", [
    ("prot = 1\n", "prot"),
    ('port = "x"\n', "port"),
    ('storage_url = "postgres://app:hunter2@db/x"\n', "storage_url"),
    ("cors_origins = 5\n", "cors_origins"),
])
def test_a_bad_setting_in_a_config_file_is_labelled_with_the_file(tmp_path, text, named):
    config = tmp_path / "collab.toml"
    config.write_text(text)
    result = collab("serve", "--config", str(config), cwd=tmp_path, timeout=20)
    line = assert_one_line(result, f"{config}: {named}: ", "hunter2")
    assert "COLLAB_" not in line


@pytest.mark.parametrize("text, named", [(None, "cannot be read"), ("port = [\n", "not valid")])
def test_an_unreadable_config_file_is_named(tmp_path, text, named):
    config = tmp_path / "collab.toml"
    if text is not None:
        config.write_text(text)
    result = collab("serve", cwd=tmp_path, env={"COLLAB_CONFIG": str(config)}, timeout=20)
    line = assert_one_line(result, f"{config}: {named}")
    assert "COLLAB_CONFIG" not in line


def test_a_bad_flag_is_named_as_the_flag(tmp_path):
    result = collab("serve", "--port", "70000", cwd=tmp_path, timeout=20)
    assert_one_line(result, "--port: 70000: ")


def test_token_with_rs256_is_one_clear_line(tmp_path):
    env = {**RS256, "COLLAB_JWT_PUBLIC_KEY": _public_key()}
    result = collab("token", "alice", cwd=tmp_path, env=env, timeout=20)
    line = assert_one_line(result, "COLLAB_JWT_ALGORITHMS")
    assert "HS" in line and result.stdout == ""


def test_a_public_key_that_parses_starts(tmp_path):
    for kind, alg in (("rsa", "RS256"), ("ec", "ES256")):
        env = {"COLLAB_JWT_ALGORITHMS": alg, "COLLAB_JWT_PUBLIC_KEY": _public_key(kind)}
        assert load_settings(env=env).public_key == env["COLLAB_JWT_PUBLIC_KEY"]
    key_file = tmp_path / "key.pem"
    key_file.write_text(_public_key())
    settings = load_settings(env={**RS256, "COLLAB_JWT_PUBLIC_KEY_FILE": str(key_file)})
    assert "PUBLIC KEY" in settings.public_key


def test_the_test_suites_variables_and_collab_config_are_not_settings():
    env = {"COLLAB_JWT_SECRET": "x" * 32, "COLLAB_TEST_REDIS_URL": "redis://x/0"}
    assert load_settings(env=env).jwt_secret == "x" * 32
    with pytest.raises(ConfigError, match=r"COLLAB_TIMEOUT: unknown setting"):
        load_settings(env={"COLLAB_TIMEOUT": "1"})


def test_settings_are_frozen_and_copies_are_validated():
    from harness import make_settings

    settings = make_settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.port = 1  # type: ignore[misc]
    assert settings.replace(port=9).port == 9 and settings.port == 0
    with pytest.raises(ConfigError, match="COLLAB_PORT"):
        settings.replace(port=-1)


# -- start-up failures that are not settings: one line naming the address and setting (1) -----

def test_an_unresolvable_host_is_one_line_naming_it(tmp_path):
    result = collab("serve", cwd=tmp_path, env={"COLLAB_HOST": "nosuch.invalid"}, timeout=30)
    line = assert_one_line(
        result, "cannot listen on nosuch.invalid:8000 (COLLAB_HOST and COLLAB_PORT)", code=1
    )
    assert "cannot start" in line


@pytest.mark.parametrize("form", ["redis://:hunter2@{}/0", "redis+cluster://:hunter2@{},{}"])
def test_unreachable_registry_is_one_line_naming_it_masked(tmp_path, form):
    from services import free_port

    url = form.format(*(f"127.0.0.1:{free_port()}" for _ in range(form.count("{}"))))
    result = collab("serve", "--port", "0", cwd=tmp_path, env={"COLLAB_REGISTRY_URL": url})
    line = assert_one_line(result, "(COLLAB_REGISTRY_URL)", "hunter2", code=1)
    assert url.replace("hunter2", "***") in line


# -- collab config ----------------------------------------------------------------------------

def test_collab_config_prints_every_setting_masked_with_its_origin(tmp_path):
    from collab.config import Settings, tomllib

    config = tmp_path / "collab.toml"
    config.write_text('max_message_chars = 5\nhost = "0.0.0.0"\n')
    env = {
        "COLLAB_CONFIG": str(config),
        "COLLAB_JWT_SECRET": "jwt-hunter2-" + "x" * 32,
        "COLLAB_METRICS_TOKEN": "metrics-hunter2-xxxxxxxx",
        "COLLAB_STORAGE_URL": "mongodb://app:pw-hunter2@db/collab?authSource=admin"
                              "&tlsCertificateKeyFilePassword=kp-hunter2",
        "COLLAB_REGISTRY_URL": "rediss+cluster://:rd-hunter2@cache1:7000,cache2:7001"
                               "?password=q-hunter2",
        "COLLAB_HOST": "::1",
    }
    result = collab("config", "--port", "9100", cwd=tmp_path, env=env)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert "hunter2" not in result.stdout
    shown = tomllib.loads(result.stdout)
    assert list(shown) == list(Settings.model_fields)
    assert shown["port"] == 9100 and shown["host"] == "::1" and shown["max_message_chars"] == 5
    assert shown["jwt_secret"] == shown["metrics_token"] == "***"
    assert shown["storage_url"] == ("mongodb://app:***@db/collab?authSource=admin"
                                    "&tlsCertificateKeyFilePassword=***")
    assert shown["registry_url"] == "rediss+cluster://:***@cache1:7000,cache2:7001?password=***"
    origins = {line.split(" = ", 1)[0]: line.rpartition("  # ")[2]
               for line in result.stdout.splitlines()}
    assert origins["port"] == "flag --port"
    assert origins["host"] == "env COLLAB_HOST"
    assert origins["max_message_chars"] == f"file {config}: max_message_chars"
    assert origins["jwt_secret"] == "env COLLAB_JWT_SECRET"
    assert origins["rate_limit_burst"] == "default"


def test_collab_config_names_the_secret_file_it_reads(tmp_path, node):
    node.start()  # creates data/jwt_secret
    result = collab("config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [line] = [line for line in result.stdout.splitlines() if line.startswith("jwt_secret ")]
    assert line == 'jwt_secret = "***"  # file data/jwt_secret'
    assert (tmp_path / "data" / "jwt_secret").read_text().strip() not in result.stdout


def test_collab_config_with_a_bad_setting_fails_like_serve(tmp_path):
    result = collab("config", cwd=tmp_path, env={"COLLAB_PROT": "9"})
    assert_one_line(result, "COLLAB_PROT: unknown setting (did you mean COLLAB_PORT?)")


# -- one masking function ---------------------------------------------------------------------

@pytest.mark.parametrize("url, expected", [
    ("redis://:pw@h/0", "redis://:***@h/0"),
    ("redis://user:pw@h:6379/0", "redis://user:***@h:6379/0"),
    ("rediss://h/0?password=pw&socket_timeout=5", "rediss://h/0?password=***&socket_timeout=5"),
    ("mongodb://u:p%40ss@h1,h2:27018/db?replicaSet=rs&authSource=admin",
     "mongodb://u:***@h1,h2:27018/db?replicaSet=rs&authSource=admin"),
    ("mongodb://h/db?tls=true&tlsCertificateKeyFile=/k.pem&tlsCertificateKeyFilePassword=kp",
     "mongodb://h/db?tls=true&tlsCertificateKeyFile=/k.pem&tlsCertificateKeyFilePassword=***"),
    ("mongodb://h/db?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:tok",
     "mongodb://h/db?authMechanism=MONGODB-AWS&authMechanismProperties=***"),
    ("mongodb+srv://u:p@cluster.example.net/db", "mongodb+srv://u:***@cluster.example.net/db"),
    ("redis://:pa?ss@h/0", "redis://***@h/0"),
    ("redis://u@h/0", "redis://u@h/0"),
    ("rediss+cluster://u:pw@h1:7000,[::1]:7001/?password=pw",
     "rediss+cluster://u:***@h1:7000,[::1]:7001/?password=***"),
    ("sqlite:///data/collab.db", "sqlite:///data/collab.db"),
    ("sqlite://:memory:", "sqlite://:memory:"),
    ("memory://", "memory://"),
])
def test_redacted_masks_every_credential_form(url, expected):
    from collab.urls import redacted

    assert redacted(url) == expected


def test_scrubbed_masks_a_drivers_message_raw_and_decoded():
    from collab.urls import scrubbed

    url = "mongodb://u:p%40ss@h/db?tlsCertificateKeyFilePassword=k%2Bp"
    text = f"failed for {url}: bad password p@ss / p%40ss, key k+p"
    assert scrubbed(text, url) == (
        "failed for mongodb://u:***@h/db?tlsCertificateKeyFilePassword=***: "
        "bad password *** / ***, key ***"
    )


def test_configuration_md_documents_every_setting_and_collab_config():
    from pathlib import Path

    from collab.config import Settings

    text = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    for name in Settings.model_fields:
        assert f"| `{name}` | `COLLAB_{name.upper()}` |" in text, name
    assert "## collab config" in text


def test_a_connection_string_option_wins_over_the_mongodb_settings_default():
    from collab.store.mongodb import MongoStore

    url = "mongodb://db/collab?serverSelectionTimeoutMS=5000&w=1&connectTimeoutMS=700"
    options = MongoStore(url, server_selection_timeout_ms=2000, write_concern="majority")
    assert options._client_options == {"socketTimeoutMS": 10000}  # the rest from the URL
    plain = MongoStore("mongodb://db/collab", write_concern="majority")
    assert plain._client_options == {"serverSelectionTimeoutMS": 2000,
                                     "connectTimeoutMS": 2000, "socketTimeoutMS": 10000,
                                     "w": "majority"}
    settings = load_settings(env={"COLLAB_STORAGE_URL": url})  # defaults: no conflict
    assert settings.mongodb_server_selection_timeout_ms == 2000
