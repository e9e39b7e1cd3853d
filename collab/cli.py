"""``collab serve`` and ``collab token``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from . import __version__
from .auth import mint_token
from .config import ConfigError, Settings, ensure_secret, load_settings
from .errors import CollabError
from .logs import configure_logging


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
    return parser


def _settings(args: argparse.Namespace, overrides: dict | None = None) -> Settings:
    settings = load_settings(args.config, overrides=overrides)
    ensure_secret(settings, create=args.command == "serve")
    settings.validate()
    return settings


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            settings = _settings(args, {"host": args.host, "port": args.port})
        else:
            settings = _settings(args)
    except ConfigError as exc:
        print(f"collab: configuration error: {exc}", file=sys.stderr)
        return 2

    if args.command == "token":
        if args.ttl is not None and args.ttl <= 0:
            print("collab: --ttl must be positive", file=sys.stderr)
            return 2
        print(mint_token(settings, args.user_id, args.name, args.roles, args.ttl))
        return 0

    # TODO(settings schema, issue 14 item 1): log_format becomes a field of Settings
    # ("text" | "json", validated with the others); until then only its variable sets it.
    log_format = os.environ.get("COLLAB_LOG_FORMAT", "text")
    try:
        configure_logging(settings.log_level, log_format)
    except ValueError as exc:
        print(f"collab: configuration error: COLLAB_LOG_FORMAT: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(settings))
    except (OSError, CollabError) as exc:
        # a taken port, an unreachable store or registry: one clear line, no traceback
        logging.getLogger("collab").error("cannot start: %s", exc)
        return 1
    return 0


async def _serve(settings: Settings) -> None:
    from .server import serve

    await serve(settings)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
