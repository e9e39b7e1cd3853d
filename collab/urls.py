"""Backend URLs as they may appear in logs and errors: credentials masked, one function."""

from __future__ import annotations

import re
import urllib.parse

MASK = "***"

#: query parameters (lower case) whose value is a credential. Redis takes ``password=``;
#: MongoDB ``tlsCertificateKeyFilePassword=`` and, in ``authMechanismProperties=``,
#: ``AWS_SESSION_TOKEN:``. ``authSource``, ``username``, ``tlsCertificateKeyFile`` (a
#: path) name no secret and stay readable.
CREDENTIAL_PARAMS = frozenset({
    "password", "pass", "passwd", "pwd", "secret", "token", "apikey", "api_key",
    "tlscertificatekeyfilepassword", "sslcertificatekeyfilepassword", "sslkeypassword",
    "authmechanismproperties",
})
#: and any parameter whose name ends so (``ssl_password``, ``access_token``...)
CREDENTIAL_SUFFIXES = ("password", "secret", "token")


def is_credential_param(name: str) -> bool:
    lowered = name.lower()
    return lowered in CREDENTIAL_PARAMS or lowered.endswith(CREDENTIAL_SUFFIXES)


def redacted(url: str) -> str:
    """``url`` with its password and credential query values replaced by ``***``:
    ``redis://:***@host/0``, ``mongodb://app:***@db/collab?tlsCertificateKeyFilePassword=***``.

    String surgery rather than urlsplit/urlunsplit, which would rewrite URLs they do
    not know (``sqlite:///x`` comes back as ``sqlite:/x``); a URL too broken to parse
    is masked all the more, never shown whole.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    rest, hash_, fragment = rest.partition("#")
    head, q, query = rest.partition("?")
    if "@" in head:
        userinfo, _, hostpart = head.rpartition("@")
        if ":" in userinfo:
            head = f"{userinfo.split(':', 1)[0]}:{MASK}@{hostpart}"
    elif "@" in query:
        # an unescaped "?" in a password: the user info did not end before the query
        _, _, after = (head + q + query).rpartition("@")
        head, q, query = MASK + "@" + after.partition("?")[0], "?", after.partition("?")[2]
        if not query:
            q = ""
    if query:
        query = "&".join(_masked_param(part) for part in query.split("&"))
    return f"{scheme}://{head}{q}{query}{hash_}{fragment}"


def redacted_target(target: str) -> str:
    """An HTTP request target (``/yjs/doc?token=...``) with credential query values
    replaced by ``***``: what a log line may show of a request."""
    path, q, query = target.partition("?")
    if not q:
        return target
    query, hash_, fragment = query.partition("#")
    return f"{path}?{'&'.join(_masked_param(part) for part in query.split('&'))}" \
        f"{hash_}{fragment}"


#: ``name=value`` after a ``?`` or ``&`` in free text: a query parameter of some URL
_PARAM = re.compile(r"(?<=[?&])([^=&\s?#'\"]+)=([^&\s#'\"]*)")


#: a credential outside a URL: an ``Authorization`` value (``Bearer <token>``, ``Basic
#: <base64>``), or anything shaped like a JWT (its header always begins ``eyJ``, the
#: encoding of ``{"``). Tornado quotes a malformed header's whole value in a log line.
_BEARER = re.compile(r"\b(Bearer|Basic)\s+[^\s'\",]+", re.IGNORECASE)
_JWT = re.compile(r"\beyJ[\w-]*\.[\w-]+\.[\w-]*")


def redacted_text(text: str) -> str:
    """``text`` with every credential masked: the value of each credential query
    parameter of any URL in it, ``Bearer``/``Basic`` credentials and JWTs (a log
    message that shows a request or a header, however it was built)."""
    if "=" in text:
        text = _PARAM.sub(_masked_match, text)
    if "eyJ" in text:
        text = _JWT.sub(MASK, text)
    # (no substring test first: the scheme's case is the client's, "BEARER" included)
    return _BEARER.sub(lambda m: f"{m.group(1)} {MASK}", text)


def _masked_match(match: re.Match[str]) -> str:
    name = match.group(1)
    if match.group(2) and is_credential_param(urllib.parse.unquote_plus(name)):
        return f"{name}={MASK}"
    return match.group(0)


def scrubbed(text: str, url: str) -> str:
    """``text`` (a driver's error message about ``url``) with every credential of
    ``url`` masked, raw or percent-decoded, and ``url`` itself shown redacted."""
    text = text.replace(url, redacted(url))
    for secret in sorted(_credentials(url), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def _masked_param(part: str) -> str:
    name, eq, _ = part.partition("=")
    if eq and is_credential_param(urllib.parse.unquote_plus(name)):
        return f"{name}={MASK}"
    return part


def _credentials(url: str) -> set[str]:
    found: set[str] = set()
    _, sep, rest = url.partition("://")
    if not sep:
        return found
    if "@" in rest:
        userinfo = rest.rpartition("@")[0]
        if ":" in userinfo:
            found.add(userinfo.split(":", 1)[1])
    for part in rest.partition("?")[2].partition("#")[0].split("&"):
        name, eq, value = part.partition("=")
        if eq and value and is_credential_param(urllib.parse.unquote_plus(name)):
            found.add(value)
    found |= {urllib.parse.unquote_plus(secret) for secret in found}
    return {secret for secret in found if secret and secret != MASK}
