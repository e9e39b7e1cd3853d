"""The opaque cursor of ``documents:list`` and ``chat:list``.

A cursor is the position of the last row of a page: its activity time and id,
the order listings sort by (newest first, ties by id). The next page is the rows
strictly below it, so a row that did not change is never seen twice or
skipped, and a row that changes moves above every cursor already handed out.
It also names the list and the user it was made for: passing it elsewhere is a
client's mistake, and answered as one rather than with someone else's page.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from collab.errors import InvalidInput

T = TypeVar("T")

KINDS = ("documents", "chats")
#: what now_iso() makes: activity times are the store's own, so nothing else is valid
_ACTIVITY = re.compile(r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")
_ID = re.compile(r"\A[A-Za-z0-9_.:-]{1,128}\Z")
#: well above any cursor we make (a user id is a token's ``sub``, kept short)
MAX_CURSOR_CHARS = 2048


@dataclass(frozen=True)
class ListCursor:
    kind: str
    user_id: str
    activity: str
    id: str

    def encode(self) -> str:
        body = json.dumps([self.kind, self.user_id, self.activity, self.id], separators=(",", ":"))
        return base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: object, kind: str, user_id: str) -> ListCursor:
        """The cursor ``text`` encodes; InvalidInput unless we made it for this list and user."""
        if not isinstance(text, str) or not text or len(text) > MAX_CURSOR_CHARS:
            raise _invalid()
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            fields = json.loads(raw.decode())
        except (binascii.Error, ValueError):  # UnicodeDecodeError and JSONDecodeError too
            raise _invalid() from None
        if (
            not isinstance(fields, list)
            or len(fields) != 4
            or not all(isinstance(f, str) for f in fields)
        ):
            raise _invalid()
        cursor = cls(*fields)
        if (
            cursor.kind != kind
            or cursor.user_id != user_id
            or not _ACTIVITY.match(cursor.activity)
            or not _ID.match(cursor.id)
        ):
            raise _invalid()
        return cursor


def _invalid() -> InvalidInput:
    return InvalidInput("Invalid cursor", {"before": "not a cursor from this list"})


def page(
    rows: list[T], limit: int, position: Callable[[T], tuple[str, str]], kind: str, user_id: str
) -> tuple[list[T], str | None]:
    """Cut ``rows`` (fetched with one extra) to ``limit``, with the next page's cursor.

    ``position(row)`` is the row's ``(activity, id)``.
    """
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    activity, row_id = position(rows[-1])
    return rows, ListCursor(kind, user_id, activity, row_id).encode()


def check_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive int, got {limit!r}")
