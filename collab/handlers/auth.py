"""``auth:refresh``: extend a live connection with a fresh token."""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any

from .. import schemas
from ..errors import CollabError, ErrorCode

if TYPE_CHECKING:
    from ..connection import Connection
    from .context import Context


async def refresh(ctx: Context, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
    identity = ctx.verifier.verify(data["token"])
    if identity.user_id != conn.user_id:
        raise CollabError(
            ErrorCode.PERMISSION_DENIED, "The new token must be for the same user (sub)"
        )
    # everything that can fail comes before the renewal: a failed refresh changes nothing
    expires = datetime.datetime.fromtimestamp(identity.expires_at, datetime.timezone.utc)
    result = {"expires_at": expires.isoformat().replace("+00:00", "Z")}
    ctx.renew(conn, identity)
    return result


EVENTS = {"auth:refresh": (schemas.AuthRefresh(), refresh)}
