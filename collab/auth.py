"""JWT verification at the handshake and on ``auth:refresh``, and minting for the CLI."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

import jwt

from .config import Settings
from .errors import Unauthorized


@dataclasses.dataclass(frozen=True)
class Identity:
    """Who a connection is, as kept in its Socket.IO session."""

    user_id: str
    name: str
    roles: tuple[str, ...]
    expires_at: float

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    def to_session(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "name": self.name,
            "roles": list(self.roles),
            "expires_at": self.expires_at,
        }


class TokenVerifier:
    """Verifies tokens against one key and an explicit algorithm allow-list."""

    def __init__(self, settings: Settings) -> None:
        self.algorithms = list(settings.jwt_algorithms)
        self.hmac_key = settings.jwt_secret
        self.public_key = settings.public_key if not all(
            a.startswith("HS") for a in self.algorithms) else ""
        self.issuer = settings.jwt_issuer or None
        self.audience = settings.jwt_audience or None
        self.leeway = settings.jwt_leeway

    def verify(self, token: Any) -> Identity:
        """Return the token's identity or raise :class:`Unauthorized` saying why."""
        if not isinstance(token, str) or not token:
            raise Unauthorized("A token is required")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise Unauthorized("Malformed token") from None
        alg = header.get("alg")
        if alg not in self.algorithms:
            raise Unauthorized(f"Token algorithm {alg!r} is not accepted")
        key = self.hmac_key if alg.startswith("HS") else self.public_key
        options = {"require": ["sub", "exp"]}
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                issuer=self.issuer,
                audience=self.audience,
                leeway=self.leeway,
                options={**options, "verify_aud": self.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("Token has expired") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"Token is missing the {exc.claim!r} claim") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized("Token audience is not accepted") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized("Token issuer is not accepted") from None
        except jwt.InvalidSignatureError:
            raise Unauthorized("Token signature is invalid") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"Invalid token: {exc}") from None
        return _identity(claims)


def _identity(claims: Mapping[str, Any]) -> Identity:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise Unauthorized("Token 'sub' must be a non-empty string")
    name = claims.get("name")
    roles = claims.get("roles") or []
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise Unauthorized("Token 'roles' must be a list of strings")
    return Identity(
        user_id=sub,
        name=name if isinstance(name, str) else sub,
        roles=tuple(roles),
        expires_at=float(claims["exp"]),
    )


def token_from_handshake(environ: Mapping[str, Any], auth: Any) -> Any:
    """The token from the CONNECT payload, else from an ``Authorization: Bearer`` header."""
    if isinstance(auth, dict) and auth.get("token") is not None:
        return auth.get("token")
    header = environ.get("HTTP_AUTHORIZATION", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def mint_token(
    settings: Settings,
    user_id: str,
    name: str | None = None,
    roles: list[str] | None = None,
    ttl: int | None = None,
) -> str:
    """Sign a token with the configured HMAC secret (what ``collab token`` prints)."""
    alg = next((a for a in settings.jwt_algorithms if a.startswith("HS")), None)
    if alg is None:
        raise ValueError("minting needs an HS* algorithm and a secret; sign RS/ES tokens yourself")
    now = int(time.time())
    claims: dict[str, Any] = {"sub": user_id, "iat": now, "exp": now + (ttl or settings.token_ttl)}
    if name:
        claims["name"] = name
    if roles:
        claims["roles"] = roles
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    return jwt.encode(claims, settings.jwt_secret, algorithm=alg)
