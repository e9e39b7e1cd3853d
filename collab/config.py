"""Settings: built-in defaults < TOML file < environment (``COLLAB_*``) < command-line flags.

One declarative schema (pydantic-settings): every setting is a field of
:class:`Settings` with its type and constraints beside it; rules between
settings are the model validators below. Its environment variable is
``COLLAB_`` plus the field name in upper case, its TOML key the field name.
Settings are frozen once loaded. A bad value fails at start with a
:class:`ConfigError`: one line per bad setting, naming it where it was given
(``COLLAB_PORT``, ``collab.toml: port``, ``--port``), its value with
credentials masked, and what is accepted.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import secrets
import socket
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import tomllib
from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from pydantic_settings.sources.utils import parse_env_vars

from .urls import redacted, scrubbed

ENV_PREFIX = "COLLAB_"
#: environment variables with our prefix that are not settings: the file to read, and
#: the test suite's own (tests/services.py)
NOT_SETTINGS = ("COLLAB_CONFIG",)
NOT_SETTINGS_PREFIXES = ("COLLAB_TEST_",)
SECRET_FILE = "jwt_secret"
SUPPORTED_ALGORITHMS = (
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512",
)
STORAGE_SCHEMES = ("sqlite://", "mongodb://", "mongodb+srv://")
REGISTRY_SCHEMES = (
    "memory://", "redis://", "rediss://", "redis+cluster://", "rediss+cluster://",
)
READ_PREFERENCES = ("primary", "primaryPreferred", "secondary", "secondaryPreferred", "nearest")
#: never shown, not even in part: errors and ``collab config`` say only whether one is set
SECRETS = frozenset({"jwt_secret", "metrics_token"})
#: shown through collab.urls.redacted
URLS = frozenset({"storage_url", "registry_url"})
#: where a value came from, lowest precedence first
ORIGINS = ("default", "file", "env", "flag")


class ConfigError(ValueError):
    """A setting is missing or malformed; each line of the message names one."""


class _Invalid(ValueError):
    """Raised by a validator about the setting ``name`` (possibly not the one it checks)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.message = message


# -- types -----------------------------------------------------------------------------------

def _split_list(value: Any) -> Any:
    """A list from the environment is comma-separated: ``COLLAB_CORS_ORIGINS=a,b``."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _host(value: str) -> str:
    """An IP address or a name that could resolve (resolved when the socket is bound)."""
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    labels = value.rstrip(".").split(".")
    # an all-numeric last label is a mistyped address (999.1.1.1), never a name (RFC 3696)
    if not value or labels[-1].isdigit() or not all(
        re.fullmatch(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)", label) for label in labels
    ):
        raise ValueError("should be an IP address or a host name")
    return value


def _storage_url(url: str) -> str:
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme == "sqlite":
        from .store.sqlite import sqlite_path  # lazy, like the store itself

        try:
            sqlite_path(url)
        except ValueError:
            raise ValueError("should be sqlite:///<relative path>, sqlite:////<absolute path>"
                             " or sqlite://:memory:") from None
    elif scheme in ("mongodb", "mongodb+srv"):
        _check_mongodb_url(url)
    else:
        raise ValueError("should start with one of " + ", ".join(STORAGE_SCHEMES))
    return url


def _check_mongodb_url(url: str) -> None:
    """What PyMongo would refuse when the store opens, refused now."""
    from pymongo.errors import PyMongoError
    from pymongo.uri_parser import parse_uri

    srv = url.lower().startswith("mongodb+srv://")
    try:
        # mongodb+srv:// would look its hosts up in DNS here; that waits for the start,
        # the rest of it is checked as the one host it names
        parsed = parse_uri("mongodb://" + url.partition("://")[2] if srv else url)
    except (PyMongoError, ValueError) as exc:
        raise ValueError(scrubbed(str(exc), url).rstrip(".")) from None
    if srv and (len(parsed["nodelist"]) != 1 or "]:" in url or _has_port(url)):
        raise ValueError("mongodb+srv:// takes one host name without a port")


def _has_port(url: str) -> bool:
    hostpart = url.partition("://")[2].rpartition("@")[2].partition("/")[0].partition("?")[0]
    return bool(re.search(r":\d*$", hostpart))


def _registry_url(url: str) -> str:
    if url == "memory://":
        return url
    if not url.lower().startswith(REGISTRY_SCHEMES[1:]):
        raise ValueError("should be memory:// or start with " + ", ".join(REGISTRY_SCHEMES[1:]))
    from .redisconn import RedisTarget  # lazy: redis is not needed to mint a token

    RedisTarget.parse(url)  # its ValueError quotes no credential
    return url


def _trusted_proxies(value: list[str]) -> list[str]:
    from .proxy import TrustedProxies  # lazy: tornado is not needed to mint a token

    TrustedProxies(value)
    return value


def _metrics_token(value: str) -> str:
    if value and not re.fullmatch(r"[!-~]{16,}", value):
        raise ValueError("should be at least 16 printable ASCII characters without spaces")
    return value


def _read_preference(value: Any) -> Any:
    """Case-insensitive: ``secondarypreferred`` is ``secondaryPreferred``."""
    if isinstance(value, str):
        return {mode.lower(): mode for mode in READ_PREFERENCES}.get(value.lower(), value)
    return value


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


Port = Annotated[int, Field(ge=0, le=65535)]
Positive = Annotated[int, Field(gt=0)]
StrList = Annotated[list[str], NoDecode, BeforeValidator(_split_list)]


class Settings(BaseSettings):
    """Everything a node is told; see docs/configuration.md for each setting."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_ignore_empty=True, extra="forbid", frozen=True,
        validate_default=True,
    )

    host: Annotated[str, AfterValidator(_host)] = "127.0.0.1"
    port: Port = 8000
    data_dir: str = "data"
    #: default: ``sqlite:///<data_dir>/collab.db``
    storage_url: Annotated[str, AfterValidator(_storage_url)] = ""
    registry_url: Annotated[str, AfterValidator(_registry_url)] = "memory://"
    #: default: ``<hostname>-<pid>``
    node_id: str = ""

    #: empty: read from (``collab serve``: created in) ``<data_dir>/jwt_secret``
    jwt_secret: str = ""
    jwt_public_key: str = ""
    jwt_public_key_file: str = ""
    jwt_algorithms: Annotated[
        list[Literal[SUPPORTED_ALGORITHMS]],  # type: ignore[valid-type]
        NoDecode, BeforeValidator(_split_list), Field(min_length=1),
    ] = ["HS256"]
    jwt_issuer: str = ""
    jwt_audience: str = ""
    jwt_leeway: float = Field(0.0, ge=0)
    token_ttl: Positive = 3600

    cors_origins: StrList = []
    #: addresses or networks (CIDR) of the reverse proxies in front of this node: only
    #: from them are X-Forwarded-Host / X-Forwarded-Proto believed (collab/proxy.py)
    trusted_proxies: Annotated[StrList, AfterValidator(_trusted_proxies)] = []

    #: seconds a client has to send a request's headers, also the most a kept-alive HTTP
    #: connection may idle between requests: a slowloris client is closed after it
    header_timeout: float = Field(30.0, gt=0)
    #: seconds a client has to send a request's body once its headers are in
    body_timeout: float = Field(60.0, gt=0)
    #: TCP connections open at once on this node; past it a new one is closed at once
    #: (lowered at start to what the file descriptor limit leaves, see collab/listener.py)
    max_connections: Positive = 10_000
    #: TCP connections open at once from one address (IPv6: one /64); a trusted proxy
    #: counts only toward max_connections
    max_connections_per_ip: Positive = 256

    #: when set, GET /metrics answers 401 without "Authorization: Bearer <metrics_token>"
    metrics_token: Annotated[str, AfterValidator(_metrics_token)] = ""
    #: serve /metrics on this port only, not on the main one; 0: on the main port
    metrics_port: Port = 0
    #: address for metrics_port; empty: the same as host
    metrics_host: str = ""

    max_packet_bytes: Positive = 1_000_000
    max_document_bytes: Positive = 512 * 1024
    max_message_chars: Positive = 10_000
    #: chat:message events of one connection in the store at once, in the order sent (on a
    #: store that takes writes in call order: SQLite); 1 handles them one at a time
    max_pipelined_messages: Positive = 8
    rate_limit_per_second: float = Field(50.0, ge=0)
    rate_limit_burst: int = Field(100, ge=0)
    #: per user, over all their connections on this node; 0 turns each off
    max_connections_per_user: int = Field(100, ge=0)
    user_rate_limit_per_second: float = Field(200.0, ge=0)
    user_rate_limit_burst: int = Field(400, ge=0)
    history_limit: Positive = 50
    history_max: Positive = 200
    #: encoded bytes of the messages in one chat:join or chat:history page (at least one)
    history_page_bytes: Positive = 1024 * 1024
    #: days of document history kept (documents:history, documents:get at a version);
    #: older versions are compacted away once a snapshot covers them. 0: keep everything
    document_history_days: int = Field(0, ge=0)
    #: a live document's whole Yjs state (history of deletions included) may not pass this
    max_document_state_bytes: Positive = 8 * 1024 * 1024
    #: live documents kept in memory at once on this node; past it the least recently
    #: used is unloaded (and loaded again from the store when next needed)
    max_loaded_documents: Positive = 1000
    #: seconds a live document stays loaded after its room's last member here left
    document_unload_after: float = Field(30.0, ge=0)
    #: seconds an awareness state (a cursor) lives without renewal: y-protocols'
    #: outdatedTimeout, whose clients renew every half of it (collab/awareness.py)
    awareness_timeout: float = Field(30.0, gt=0)

    #: the Socket.IO Admin UI on the /admin namespace, signed in with an admin-role JWT
    #: as the password (collab/admin.py, docs/deployment.md)
    admin_ui: bool = False
    #: leave out the Admin UI's actions (emit, join, leave, disconnect)
    admin_ui_read_only: bool = True

    websocket_compression: bool = False
    #: broadcast by writing one pre-framed message to each idle WebSocket
    #: (collab/broadcast/local.py)
    fast_broadcast: bool = True
    #: unsent bytes one WebSocket may hold on the server before it is closed as too slow
    max_send_buffer_bytes: Positive = 4 * 1024 * 1024
    ping_interval: float = Field(25.0, gt=0)
    ping_timeout: float = Field(20.0, gt=0)
    shutdown_timeout: float = Field(10.0, ge=0)
    log_level: Annotated[
        Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], BeforeValidator(_upper)
    ] = "INFO"
    log_format: Literal["text", "json"] = "text"

    #: The three MongoDB settings are the defaults for the connection-string options
    #: serverSelectionTimeoutMS=, w= and readPreference=: a storage_url that sets the
    #: option itself wins, and setting both is an error (docs/storage.md)
    mongodb_server_selection_timeout_ms: Positive = 2000
    mongodb_write_concern: str = ""
    mongodb_read_preference: Annotated[
        Literal[("", *READ_PREFERENCES)],  # type: ignore[valid-type]
        BeforeValidator(_read_preference),
    ] = ""

    _origins: dict[str, str] = PrivateAttr(default_factory=dict)
    _config_file: str = PrivateAttr(default="")

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        *_: PydanticBaseSettingsSource, **__: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Constructing Settings(...) takes only what it is given: load_settings reads the
        # TOML file and the environment itself, to know where each value came from.
        return (init_settings,)

    def page_limit(self, requested: int | None) -> int:
        """The size of a history or listing page: ``history_limit`` unless the client
        asked for a size, never more than ``history_max``."""
        return min(requested or self.history_limit, self.history_max)

    # -- rules between settings ------------------------------------------------------------

    @model_validator(mode="before")
    @classmethod
    def _derived_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            if not data.get("storage_url"):
                data_dir = data.get("data_dir") or "data"
                data["storage_url"] = "sqlite:///" + str(Path(str(data_dir)) / "collab.db")
            if not data.get("node_id"):
                data["node_id"] = f"{socket.gethostname()}-{os.getpid()}"
        return data

    @field_validator("mongodb_write_concern")
    @classmethod
    def _write_concern(cls, value: str) -> str:
        if value and not re.fullmatch(r"\d+|[A-Za-z][\w.-]*", value):
            raise ValueError("should be majority, a number of members or a tag set name")
        return value

    @model_validator(mode="after")
    def _rules(self) -> Settings:
        if not self.uses_hmac or not self.jwt_secret:
            pass  # empty: from <data_dir>/jwt_secret (ensure_secret)
        elif len(self.jwt_secret.encode()) < 32:
            raise _Invalid("jwt_secret", "should be at least 32 bytes "
                           "(HMAC keys shorter than the hash are weak)")
        self._check_public_key()
        if self.user_rate_limit_per_second > 0 and self.user_rate_limit_burst < 1:
            raise _Invalid("user_rate_limit_burst", "should be at least 1 while "
                           "user_rate_limit_per_second is on (a bucket of 0 refuses everything)")
        if self.history_limit > self.history_max:
            raise _Invalid("history_limit", f"should not exceed history_max ({self.history_max})")
        if self.history_page_bytes >= self.max_send_buffer_bytes:
            # a page must leave room for the broadcasts that follow it to its reader
            raise _Invalid("history_page_bytes", "should be below max_send_buffer_bytes "
                           f"({self.max_send_buffer_bytes})")
        if self.metrics_port and self.metrics_port == self.port:
            raise _Invalid("metrics_port", "should differ from port (0: the same port)")
        self._check_mongodb_options()
        return self

    def _check_public_key(self) -> None:
        asymmetric = [a for a in self.jwt_algorithms if not a.startswith("HS")]
        if not asymmetric:
            return
        name = "jwt_public_key" if self.jwt_public_key else "jwt_public_key_file"
        try:
            key = self.public_key
        except OSError as exc:
            raise _Invalid(name, f"cannot be read: {exc.strerror or exc}") from None
        if not key:
            raise _Invalid("jwt_public_key", f"is needed for {', '.join(asymmetric)} "
                           "(set it or jwt_public_key_file)")
        if "PRIVATE KEY" in key:
            raise _Invalid(name, "is a private key; give the public key")
        import jwt  # lazy: PyJWT and cryptography, only for RS/ES keys

        for alg in asymmetric:
            try:
                jwt.get_algorithm_by_name(alg).prepare_key(key)
            except (jwt.InvalidKeyError, ValueError, TypeError) as exc:
                raise _Invalid(name, f"is not a PEM public key that {alg} can use "
                               f"({type(exc).__name__})") from None

    def _check_mongodb_options(self) -> None:
        if not self.storage_url.lower().startswith("mongodb"):
            return
        options = {key.lower() for key in _url_options(self.storage_url)}
        for name, option in MONGODB_OPTIONS.items():
            if name in self.model_fields_set and option.lower() in options:
                raise _Invalid(name, f"the storage URL sets {option}= already; set it in one "
                               "place (the URL's option wins over the default)")

    # -- derived ---------------------------------------------------------------------------

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

    def origin(self, name: str) -> str:
        """Where ``name``'s value came from: one of :data:`ORIGINS` (or the secret's file)."""
        return self._origins.get(name, "default")

    def label(self, name: str) -> str:
        """How to name ``name`` to the operator: as it was given."""
        return _label(name, self._origins, self._config_file)

    def replace(self, **changes: Any) -> Settings:
        """A validated copy with ``changes`` (the settings themselves stay frozen)."""
        values = {name: getattr(self, name) for name in self.model_fields_set}
        values.update(changes)
        return build_settings(values, {**self._origins}, self._config_file)


#: mongodb_* setting -> the connection-string option it is the default for
MONGODB_OPTIONS = {
    "mongodb_server_selection_timeout_ms": "serverSelectionTimeoutMS",
    "mongodb_write_concern": "w",
    "mongodb_read_preference": "readPreference",
}


def _url_options(url: str) -> dict[str, str]:
    query = url.partition("?")[2].partition("#")[0]
    return dict(urllib.parse.parse_qsl(query, keep_blank_values=True))


def _env(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _label(name: str, origins: Mapping[str, str], config_file: str) -> str:
    origin = origins.get(name, "default")
    if origin == "flag":
        return "--" + name.replace("_", "-")
    if origin == "file" and config_file:
        return f"{config_file}: {name}"
    return _env(name)


def shown(name: str, value: Any) -> str:
    """``value`` of setting ``name`` as it may be printed: secrets hidden, URLs redacted,
    long values shortened."""
    if name in SECRETS or (name == "jwt_public_key" and "PRIVATE" in str(value)):
        # (a private key pasted where the public one goes is a secret all the same)
        return f"<{len(str(value).encode())} bytes, hidden>" if value else "''"
    if name in URLS and isinstance(value, str):
        value = redacted(value)
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _describe(exc: ValidationError, values: Mapping[str, Any], origins: Mapping[str, str],
              config_file: str) -> str:
    """One line per bad setting: its label, its value (masked), what is accepted."""
    lines: dict[str, str] = {}
    for error in exc.errors(include_url=False):
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, _Invalid):
            name, message, value = cause.name, cause.message, values.get(cause.name)
        else:
            name = str(error["loc"][0]) if error["loc"] else "?"
            message, value = error["msg"], error.get("input")
            # pydantic's "Input should be ...": the line names the setting already
            message = message.removeprefix("Value error, ").removeprefix("Input ")
            message = message[:1].lower() + message[1:]
        if error["type"] == "extra_forbidden":
            line = f"{_label(name, origins, config_file)}: unknown setting{_guess(name)}"
        elif value is None and name not in values:
            line = f"{_label(name, origins, config_file)}: {message}"
        else:
            line = f"{_label(name, origins, config_file)}: {shown(name, value)}: {message}"
        lines.setdefault(name, line)
    return "\n".join(lines.values())


def _guess(name: str, env: bool = False) -> str:
    fields = list(Settings.model_fields)
    if env:
        close = difflib.get_close_matches(name, [_env(f) for f in fields], n=1)
    else:
        close = difflib.get_close_matches(name, fields, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def build_settings(values: Mapping[str, Any], origins: Mapping[str, str] | None = None,
                   config_file: str = "") -> Settings:
    """Validated settings from ``values``, or :class:`ConfigError` naming each bad one as
    ``origins`` say it was given (environment variable names by default)."""
    origins = dict(origins or {})
    try:
        settings = Settings(**values)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, values, origins, config_file)) from None
    settings._origins = origins
    settings._config_file = config_file
    return settings


def _read_file(config_file: str) -> dict[str, Any]:
    # TomlConfigSettingsSource skips a file that does not exist: a mistyped --config
    # must not silently mean the defaults
    try:
        with open(config_file, "rb"):
            pass
        return TomlConfigSettingsSource(Settings, toml_file=config_file)()
    except OSError as exc:
        raise ConfigError(f"{config_file}: cannot be read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{config_file}: not valid TOML: {exc}") from None


class _Environment(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping (the tests pass theirs)."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(Settings)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._environ, self.case_sensitive, self.env_ignore_empty,
                              self.env_parse_none_str)


def _unknown_variables(env: Mapping[str, str]) -> list[str]:
    known = {_env(name) for name in Settings.model_fields}
    return sorted(
        name for name in env
        if name.upper().startswith(ENV_PREFIX) and name.upper() not in known
        and name.upper() not in NOT_SETTINGS and not name.upper().startswith(NOT_SETTINGS_PREFIXES)
    )


def load_settings(
    config_file: str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build settings from defaults, an optional TOML file, the environment
    and explicit overrides (command-line flags), in that order."""
    env = os.environ if env is None else env
    errors = [f"{name}: unknown setting{_guess(name.upper(), env=True)}"
              for name in _unknown_variables(env)]
    if errors:
        raise ConfigError("\n".join(errors))
    config_file = config_file or env.get(ENV_PREFIX + "CONFIG") or ""
    layers = {
        "file": _read_file(config_file) if config_file else {},
        "env": _Environment(env)(),
        "flag": {k: v for k, v in (overrides or {}).items() if v is not None},
    }
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for origin, layer in layers.items():
        values.update(layer)
        origins.update(dict.fromkeys(layer, origin))
    return build_settings(values, origins, config_file)


def ensure_secret(settings: Settings, create: bool) -> Settings:
    """``settings`` with ``jwt_secret`` from ``<data_dir>/jwt_secret``, created if asked.

    This is what lets ``collab serve`` and ``collab token`` agree on a key on
    a fresh machine with nothing configured.
    """
    if settings.jwt_secret or not settings.uses_hmac:
        return settings
    path = Path(settings.data_dir) / SECRET_FILE
    if path.exists():
        secret = path.read_text().strip()
    elif not create:
        raise ConfigError(
            f"{settings.label('jwt_secret')}: not set and {path} does not exist; "
            "run `collab serve` once here or set the secret"
        )
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_urlsafe(48)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secret + "\n")
    filled = settings.replace(jwt_secret=secret)
    filled._origins["jwt_secret"] = str(path)
    return filled
