"""JWT verification at the handshake and on ``auth:refresh``, and minting for the CLI."""

from __future__ import annotations

import binascii
import dataclasses
import time
from collections.abc import Mapping
from typing import Any

import jwt
from jwt.algorithms import HMACAlgorithm
from jwt.utils import base64url_decode, base64url_encode

from .config import Settings
from .errors import Unauthorized
from .text import is_text

#: What parsing a hostile token can raise besides PyJWT's own errors: text that is
#: not UTF-8 or holds a lone surrogate (UnicodeError, a ValueError), numbers no
#: float or int conversion takes (OverflowError), JSON of the wrong shape
#: (TypeError), nesting (RecursionError).
MALFORMED: tuple[type[Exception], ...] = (ValueError, OverflowError, TypeError, RecursionError)

#: The longest token looked at: a JWT is a few hundred bytes, an RS512 one with many
#: claims a few KiB; what comes in a CONNECT packet is bounded by the same 16 KiB.
MAX_TOKEN_CHARS = 16 * 1024

#: The latest ``exp`` accepted: 9999-12-31T23:59:59Z, the last instant a datetime
#: (the ``expires_at`` of ``auth:refresh``) can show. PyJWT accepts any integer.
MAX_EXP = 253402300799


@dataclasses.dataclass(frozen=True, slots=True)
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


class PreparedHMAC(HMACAlgorithm):
    """PyJWT's HMAC with the server's secret checked and prepared once, not per token.

    PyJWT prepares the key for every token it verifies, and for an HMAC secret
    that means making sure it is no PEM, SSH or DER key (two parses by
    ``cryptography``) and no JSON Web Key (a JSON parse): most of the time
    verification took in a connect storm (bench/README.md). The secret is one
    for the life of the server (changing it is a restart); any other key
    passed in is prepared as PyJWT prepares it.
    """

    def __init__(self, hash_alg: Any, secret: str) -> None:
        super().__init__(hash_alg)
        self._secret = secret
        try:
            self._prepared: bytes | None = super().prepare_key(secret)
        except jwt.InvalidKeyError:
            self._prepared = None  # refused at each verify, as PyJWT would
        self._length_note = (super().check_key_length(self._prepared)
                             if self._prepared is not None else None)

    def prepare_key(self, key: str | bytes) -> bytes:
        if key is self._secret and self._prepared is not None:
            return self._prepared
        return super().prepare_key(key)

    def check_key_length(self, key: bytes) -> str | None:
        if key is self._prepared:
            return self._length_note
        return super().check_key_length(key)


#: the base64url alphabet (RFC 4648 section 5), which every JWT segment is written in
_BASE64URL = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


class FastJWS(jwt.PyJWS):
    """PyJWT's JWS, checking a segment's alphabet in one pass instead of byte by byte.

    PyJWT checks that a segment holds only base64url characters with a Python
    generator over its bytes, for each of the three segments, twice per token
    (the header is read first, to pick the key): a third of a verification.
    A segment that is all alphabet (every token a client normally sends)
    takes the same remaining checks here, the length and the canonical round
    trip, with the same errors; any other segment goes to PyJWT's own checks.
    """

    @staticmethod
    def _decode_base64url_segment(segment: bytes, name: str) -> bytes:
        if segment.translate(None, _BASE64URL):  # padding or junk: PyJWT decides
            return jwt.PyJWS._decode_base64url_segment(segment, name)
        if len(segment) % 4 == 1:
            raise jwt.DecodeError(f"Invalid {name} padding")
        try:
            decoded = base64url_decode(segment)
        except (TypeError, binascii.Error) as err:
            raise jwt.DecodeError(f"Invalid {name} padding") from err
        if base64url_encode(decoded) != segment:
            raise jwt.DecodeError(f"Invalid {name} padding")
        return decoded


class Decoder(jwt.PyJWT):
    """PyJWT's decoder over a :class:`FastJWS` (the JWS layer is where it decodes)."""

    def __init__(self) -> None:
        super().__init__()
        self._jws = FastJWS(options=self._jws.options)

    @property
    def jws(self) -> FastJWS:
        return self._jws  # type: ignore[return-value]


_HMAC_HASHES = {"HS256": HMACAlgorithm.SHA256, "HS384": HMACAlgorithm.SHA384,
                "HS512": HMACAlgorithm.SHA512}


class TokenVerifier:
    """Verifies tokens against one key and an explicit algorithm allow-list.

    Keys are prepared once: the HMAC secret by :class:`PreparedHMAC`, a public
    key parsed from its PEM the first time an algorithm needs it (PyJWT
    parses it again for every token it is given as text).
    """

    def __init__(self, settings: Settings) -> None:
        self.algorithms = list(settings.jwt_algorithms)
        self.hmac_key = settings.jwt_secret
        if settings.uses_hmac and not self.hmac_key:
            # empty means "from <data_dir>/jwt_secret": config.ensure_secret fills it in
            raise ValueError("jwt_secret is empty: call collab.config.ensure_secret first")
        self.public_key = settings.public_key if not all(
            a.startswith("HS") for a in self.algorithms) else ""
        self.issuer = settings.jwt_issuer or None
        self.audience = settings.jwt_audience or None
        self.leeway = settings.jwt_leeway
        #: our own PyJWT, whose HMAC algorithms hold the prepared secret
        self._jwt = Decoder()
        for alg in self.algorithms:
            if alg in _HMAC_HASHES and self.hmac_key:
                self._jwt.jws.unregister_algorithm(alg)
                self._jwt.jws.register_algorithm(alg, PreparedHMAC(_HMAC_HASHES[alg],
                                                                   self.hmac_key))
        #: algorithm -> the public key as its algorithm prepared it (or the PEM text,
        #: if it would not: PyJWT then refuses each token as before)
        self._public_keys: dict[str, Any] = {}

    def _key(self, alg: str) -> Any:
        if alg.startswith("HS"):
            return self.hmac_key
        key = self._public_keys.get(alg)
        if key is None:
            try:
                key = jwt.get_algorithm_by_name(alg).prepare_key(self.public_key)
            except (jwt.PyJWTError, NotImplementedError, *MALFORMED):
                key = self.public_key
            self._public_keys[alg] = key
        return key

    def verify(self, token: Any) -> Identity:
        """Return the token's identity or raise :class:`Unauthorized` saying why.

        Nothing else escapes: the token is the client's, so whatever parsing it
        raises (PyJWT's errors, :data:`MALFORMED`) is the token's fault, and an
        exception that escaped would cost a traceback per attempt.
        """
        if not isinstance(token, str) or not token:
            raise Unauthorized("A token is required")
        if len(token) > MAX_TOKEN_CHARS:
            # before PyJWT, which checks base64url a character at a time (100 ms for 700 KB)
            raise Unauthorized(f"Token is longer than {MAX_TOKEN_CHARS} characters")
        try:
            header = self._jwt.jws.get_unverified_header(token)
        except (jwt.DecodeError, *MALFORMED):
            raise Unauthorized("Malformed token") from None
        except jwt.PyJWTError as exc:  # a non-string kid, a malformed crit, ...
            raise Unauthorized(f"Invalid token header: {_quote(exc)}") from None
        alg = header.get("alg")
        if alg not in self.algorithms:
            # a string is quoted, shortened; anything else is named (a repr can be huge or fail)
            shown = f"{alg!r:.40}" if isinstance(alg, str) else f"of type {type(alg).__name__}"
            raise Unauthorized(f"Token algorithm {shown} is not accepted")
        options = {"require": ["sub", "exp"]}
        try:
            claims = self._jwt.decode(
                token,
                self._key(alg),
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
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"Invalid token: {_quote(exc)}") from None
        except MALFORMED:
            raise Unauthorized("Malformed token") from None
        return _identity(claims)


def _quote(exc: Exception) -> str:
    """An exception's text safe to send: bounded, lone surrogates escaped.

    PyJWT quotes header values (a ``crit`` entry) in its messages, and those
    are the client's.
    """
    return str(exc)[:200].encode("utf-8", "backslashreplace").decode("utf-8")


def _encodable(value: Any) -> bool:
    """A string that is text (collab/text.py): a lone surrogate in a claim would fail
    later, in a log line, the registry or an encoder."""
    return isinstance(value, str) and is_text(value)


def _identity(claims: Mapping[str, Any]) -> Identity:
    sub = claims.get("sub")
    if not sub or not _encodable(sub):
        raise Unauthorized("Token 'sub' must be a non-empty string")
    name = claims.get("name")
    if isinstance(name, str) and not _encodable(name):
        raise Unauthorized("Token 'name' is not valid text")
    roles = claims.get("roles") or []
    if not isinstance(roles, list) or not all(_encodable(r) for r in roles):
        raise Unauthorized("Token 'roles' must be a list of strings")
    try:
        expires_at = float(claims["exp"])  # PyJWT has checked int(exp) only
    except MALFORMED:
        raise Unauthorized("Token 'exp' is out of range (after the year 9999)") from None
    if not expires_at <= MAX_EXP:  # also NaN
        raise Unauthorized("Token 'exp' is out of range (after the year 9999)")
    return Identity(
        user_id=sub,
        name=name if isinstance(name, str) else sub,
        roles=tuple(roles),
        expires_at=expires_at,
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
