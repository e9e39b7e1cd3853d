"""Backend URLs as they may appear in logs and errors."""

from __future__ import annotations

import urllib.parse


def redacted(url: str) -> str:
    """``url`` with any password replaced by ``***``: ``redis://:***@host/0``."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{hostinfo}"))
