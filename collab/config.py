"""Settings: built-in defaults < TOML file < environment (``COLLAB_*``).

Every setting is a field of :class:`Settings`; its environment variable is
``COLLAB_`` plus the field name in upper case, and its TOML key is the field
name. A bad value fails at start with a :class:`ConfigError` naming the
setting.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENV_PREFIX = "COLLAB_"
SECRET_FILE = "jwt_secret"
SUPPORTED_ALGORITHMS = (
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512",
)
STORAGE_SCHEMES = ("sqlite://", "mongodb://", "mongodb+srv://")
REGISTRY_SCHEMES = ("memory://", "redis://", "rediss://")


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names it."""


@dataclasses.dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: str = "data"
    #: default: ``sqlite:///<data_dir>/collab.db``
    storage_url: str = ""
    registry_url: str = "memory://"
    node_id: str = ""

    jwt_secret: str = ""
    jwt_public_key: str = ""
    jwt_public_key_file: str = ""
    jwt_algorithms: list[str] = dataclasses.field(default_factory=lambda: ["HS256"])
    jwt_issuer: str = ""
    jwt_audience: str = ""
    jwt_leeway: float = 0.0
    token_ttl: int = 3600

    cors_origins: list[str] = dataclasses.field(default_factory=list)
    #: addresses or networks (CIDR) of the reverse proxies in front of this node: only
    #: from them are X-Forwarded-Host / X-Forwarded-Proto believed (collab/proxy.py)
    trusted_proxies: list[str] = dataclasses.field(default_factory=list)

    #: seconds a client has to send a request's headers, also the most a kept-alive HTTP
    #: connection may idle between requests: a slowloris client is closed after it
    header_timeout: float = 30.0
    #: seconds a client has to send a request's body once its headers are in
    body_timeout: float = 60.0
    #: TCP connections open at once on this node; past it a new one is closed at once
    #: (lowered at start to what the file descriptor limit leaves, see collab/listener.py)
    max_connections: int = 10_000
    #: TCP connections open at once from one address (IPv6: one /64); a trusted proxy
    #: counts only toward max_connections
    max_connections_per_ip: int = 256

    #: when set, GET /metrics answers 401 without "Authorization: Bearer <metrics_token>"
    metrics_token: str = ""
    #: serve /metrics on this port only, not on the main one; 0: on the main port
    metrics_port: int = 0
    #: address for metrics_port; empty: the same as host
    metrics_host: str = ""

    max_packet_bytes: int = 1_000_000
    max_document_bytes: int = 512 * 1024
    max_message_chars: int = 10_000
    rate_limit_per_second: float = 50.0
    rate_limit_burst: int = 100
    #: per user, over all their connections on this node; 0 turns each off
    max_connections_per_user: int = 100
    user_rate_limit_per_second: float = 200.0
    user_rate_limit_burst: int = 400
    history_limit: int = 50
    history_max: int = 200
    #: encoded bytes of the messages in one chat:join or chat:history page (at least one)
    history_page_bytes: int = 1024 * 1024

    websocket_compression: bool = False
    #: broadcast by writing one pre-framed message to each idle WebSocket (collab/fanout.py)
    fast_broadcast: bool = True
    #: unsent bytes one WebSocket may hold on the server before it is closed as too slow
    max_send_buffer_bytes: int = 4 * 1024 * 1024
    ping_interval: float = 25.0
    ping_timeout: float = 20.0
    shutdown_timeout: float = 10.0
    log_level: str = "INFO"

    mongodb_server_selection_timeout_ms: int = 2000
    mongodb_write_concern: str = ""
    mongodb_read_preference: str = ""

    # -- derived -----------------------------------------------------------

    @property
    def public_key(self) -> str:
        if self.jwt_public_key:
            return self.jwt_public_key
        if self.jwt_public_key_file:
            return Path(self.jwt_public_key_file).read_text()
        return ""

    @property
    def uses_hmac(self) -> bool:
        return any(a.startswith("HS") for a in self.jwt_algorithms)

    def validate(self) -> None:
        """Raise :class:`ConfigError` for the first setting that cannot work."""
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"{_env('port')}: {self.port} is not a TCP port (0-65535)")
        self._validate_connections()
        if not self.storage_url.startswith(STORAGE_SCHEMES):
            raise ConfigError(
                f"{_env('storage_url')}: {self.storage_url!r} must start with one of "
                + ", ".join(STORAGE_SCHEMES)
            )
        if not self.registry_url.startswith(REGISTRY_SCHEMES):
            raise ConfigError(
                f"{_env('registry_url')}: {self.registry_url!r} must start with one of "
                + ", ".join(REGISTRY_SCHEMES)
            )
        if not self.jwt_algorithms:
            raise ConfigError(f"{_env('jwt_algorithms')}: at least one algorithm is needed")
        for alg in self.jwt_algorithms:
            if alg not in SUPPORTED_ALGORITHMS:
                raise ConfigError(
                    f"{_env('jwt_algorithms')}: {alg!r} is not allowed; use "
                    + ", ".join(SUPPORTED_ALGORITHMS)
                )
        if any(not a.startswith("HS") for a in self.jwt_algorithms):
            try:
                key = self.public_key
            except OSError as exc:
                raise ConfigError(f"{_env('jwt_public_key_file')}: {exc}") from None
            if not key:
                raise ConfigError(
                    f"{_env('jwt_public_key')}: RS/ES algorithms need a public key "
                    f"(or {_env('jwt_public_key_file')})"
                )
        if self.uses_hmac and len(self.jwt_secret.encode()) < 32:
            raise ConfigError(
                f"{_env('jwt_secret')}: must be at least 32 bytes "
                "(HMAC keys shorter than the hash are weak)"
            )
        for name in ("max_packet_bytes", "max_document_bytes", "max_message_chars",
                     "history_limit", "history_max", "token_ttl", "max_send_buffer_bytes",
                     "history_page_bytes"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{_env(name)}: must be positive")
        for name in ("rate_limit_per_second", "rate_limit_burst", "jwt_leeway",
                     "shutdown_timeout"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{_env(name)}: must not be negative")
        for name in ("max_connections_per_user", "user_rate_limit_per_second",
                     "user_rate_limit_burst"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{_env(name)}: must not be negative (0 turns it off)")
        if self.user_rate_limit_per_second > 0 and self.user_rate_limit_burst < 1:
            raise ConfigError(
                f"{_env('user_rate_limit_burst')}: must be at least 1 while "
                f"{_env('user_rate_limit_per_second')} is on (a bucket of 0 refuses everything)"
            )
        if self.history_limit > self.history_max:
            raise ConfigError(f"{_env('history_limit')}: must not exceed history_max")
        if self.history_page_bytes >= self.max_send_buffer_bytes:
            # a page must leave room for the broadcasts that follow it to its reader
            raise ConfigError(f"{_env('history_page_bytes')}: must be below "
                              f"max_send_buffer_bytes ({self.max_send_buffer_bytes})")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ConfigError(f"{_env('log_level')}: {self.log_level!r} is not a log level")

    def _validate_connections(self) -> None:
        """Connections: whom to believe, how long to wait, how many to take, /metrics."""
        from .proxy import TrustedProxies  # lazy: tornado is not needed to mint a token

        try:
            TrustedProxies(self.trusted_proxies)
        except ValueError as exc:
            raise ConfigError(f"{_env('trusted_proxies')}: {exc}") from None
        for name in ("header_timeout", "body_timeout", "max_connections",
                     "max_connections_per_ip"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{_env(name)}: must be positive")
        if not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"{_env('metrics_port')}: {self.metrics_port} is not a TCP port")
        if self.metrics_port and self.metrics_port == self.port:
            raise ConfigError(f"{_env('metrics_port')}: must differ from port (0: the same)")
        # never echo the token: configuration errors are printed and logged
        if self.metrics_token and not re.fullmatch(r"[!-~]{16,}", self.metrics_token):
            raise ConfigError(
                f"{_env('metrics_token')}: must be at least 16 printable ASCII characters "
                "without spaces"
            )


def _env(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _coerce(field: dataclasses.Field, value: Any, source: str) -> Any:
    """Turn a TOML value or an environment string into the field's type."""
    kind = field.type if isinstance(field.type, str) else field.type.__name__
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError("expected an integer")
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError("expected a number")
            return float(value)
        if kind == "list[str]":
            if isinstance(value, str):
                return [part.strip() for part in value.split(",") if part.strip()]
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return list(value)
            raise ValueError("expected a list of strings")
        if not isinstance(value, str):
            raise ValueError("expected a string")
        return value
    except ValueError as exc:
        raise ConfigError(f"{source}: {value!r} is invalid ({exc})") from None


def load_settings(
    config_file: str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build settings from defaults, an optional TOML file, the environment
    and explicit overrides (command-line flags), in that order."""
    env = os.environ if env is None else env
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    values: dict[str, Any] = {}

    config_file = config_file or env.get(ENV_PREFIX + "CONFIG") or None
    if config_file:
        try:
            with open(config_file, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"{ENV_PREFIX}CONFIG: cannot read {config_file}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(
                f"{ENV_PREFIX}CONFIG: {config_file} is not valid TOML: {exc}"
            ) from None
        for key, value in data.items():
            if key not in fields:
                raise ConfigError(f"{config_file}: unknown setting {key!r}")
            values[key] = _coerce(fields[key], value, f"{config_file}: {key}")

    for name, field in fields.items():
        raw = env.get(_env(name))
        if raw is not None and raw != "":
            values[name] = _coerce(field, raw, _env(name))

    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = _coerce(fields[name], value, f"--{name.replace('_', '-')}")

    settings = Settings(**values)
    if not settings.storage_url:
        settings.storage_url = "sqlite:///" + str(Path(settings.data_dir) / "collab.db")
    if not settings.node_id:
        settings.node_id = f"{socket.gethostname()}-{os.getpid()}"
    settings.log_level = settings.log_level.upper()
    return settings


def ensure_secret(settings: Settings, create: bool) -> None:
    """Fill in ``jwt_secret`` from ``<data_dir>/jwt_secret``, creating it if asked.

    This is what lets ``collab serve`` and ``collab token`` agree on a key on
    a fresh machine with nothing configured.
    """
    if settings.jwt_secret or not settings.uses_hmac:
        return
    path = Path(settings.data_dir) / SECRET_FILE
    if path.exists():
        settings.jwt_secret = path.read_text().strip()
        return
    if not create:
        raise ConfigError(
            f"{_env('jwt_secret')}: not set and {path} does not exist; "
            "run `collab serve` once here or set the secret"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")
    settings.jwt_secret = secret
