"""``collab serve``, ``collab token`` and ``collab config``.

Exit status: 0 done; 2 a bad setting or argument (one line per bad setting, nothing
started); 1 a start-up failure that is not a setting's value (the port is taken, the
store or registry does not answer): one line naming the address and the setting.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import sys

from . import __version__
from .auth import mint_token
from .config import SECRETS, URLS, ConfigError, Settings, ensure_secret, load_settings, shown
from .errors import CollabError
from .logs import configure_logging
from .urls import redacted


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="collab", description="Self-hostable real-time collaboration server."
    )
    parser.add_argument("--version", action="version", version=f"collab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("--config", help="TOML settings file (default: $COLLAB_CONFIG)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8000)")

    token = sub.add_parser("token", help="print a JWT signed with the configured secret")
    token.add_argument("user_id", help="the token's subject (sub)")
    token.add_argument("--config", help="TOML settings file (default: $COLLAB_CONFIG)")
    token.add_argument("--name", help="display name claim")
    token.add_argument("--role", action="append", dest="roles", metavar="ROLE",
                       help="add a role claim, e.g. admin (repeatable)")
    token.add_argument("--ttl", type=int, help="lifetime in seconds (default: token_ttl)")
    token.add_argument("--url", action="store_true",
                       help="print a sign-in URL for the web app at the configured host and "
                            "port instead of the bare token")
    token.add_argument("--host", help="with --url: as given to collab serve")
    token.add_argument("--port", type=int, help="with --url: as given to collab serve")

    config = sub.add_parser(
        "config", help="print the effective settings, credentials masked, and their origin"
    )
    config.add_argument("--config", help="TOML settings file (default: $COLLAB_CONFIG)")
    config.add_argument("--host", help="as for collab serve")
    config.add_argument("--port", type=int, help="as for collab serve")
    return parser


def _settings(args: argparse.Namespace, overrides: dict | None = None) -> Settings:
    settings = load_settings(args.config, overrides=overrides)
    if args.command == "config":
        try:
            return ensure_secret(settings, create=False)
        except ConfigError:
            return settings  # shown empty: `collab serve` creates it
    if args.command == "token" and not settings.uses_hmac:
        algorithms = shown("jwt_algorithms", settings.jwt_algorithms)
        raise ConfigError(
            f"{settings.label('jwt_algorithms')}: {algorithms}: `collab token` signs with an "
            "HS* algorithm and jwt_secret; "
            "sign RS/ES tokens with your own private key"
        )
    return ensure_secret(settings, create=args.command == "serve")


def print_config(settings: Settings) -> None:
    """``key = value  # origin`` for every setting, in the order of config/collab.example.toml."""
    for name in Settings.model_fields:
        value = getattr(settings, name)
        origin = settings.origin(name)
        if origin not in ("default", "file", "env", "flag"):
            origin = f"file {origin}"  # the secret from <data_dir>/jwt_secret
        elif origin != "default":
            origin = f"{origin} {settings.label(name)}"
        print(f"{name} = {_toml(name, value)}  # {origin}")


def _toml(name: str, value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(json.dumps(item) for item in value) + "]"
    if name in SECRETS:
        return json.dumps("***" if value else "")
    return json.dumps(redacted(value) if name in URLS else value)


def sign_in_url(settings: Settings, token: str) -> str:
    """``http://HOST:PORT/#token=...``: the web app takes the token from the fragment, which
    browsers never send to a server, so it stays out of access logs and proxies."""
    host = settings.host
    try:
        address = ipaddress.ip_address(host)
    except ValueError:  # a host name
        pass
    else:
        if address.is_unspecified:  # listens everywhere, but is no address to browse to
            address = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
        host = f"[{address}]" if address.version == 6 else str(address)
    return f"http://{host}:{settings.port}/#token={token}"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = _settings(args, {"host": args.host, "port": args.port})
    except ConfigError as exc:
        for line in str(exc).splitlines():
            print(f"collab: configuration error: {line}", file=sys.stderr)
        return 2

    if args.command == "config":
        print_config(settings)
        return 0

    if args.command == "token":
        if args.ttl is not None and args.ttl <= 0:
            print("collab: --ttl must be positive", file=sys.stderr)
            return 2
        token = mint_token(settings, args.user_id, args.name, args.roles, args.ttl)
        print(sign_in_url(settings, token) if args.url else token)
        return 0

    configure_logging(settings.log_level, settings.log_format)
    from .server import StartupError

    try:
        asyncio.run(_serve(settings))
    except (StartupError, OSError, CollabError) as exc:
        # a taken port, an unreachable store or registry: one clear line, no traceback
        logging.getLogger("collab").error("cannot start: %s", exc)
        return 1
    return 0


async def _serve(settings: Settings) -> None:
    from .server import serve

    await serve(settings)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
