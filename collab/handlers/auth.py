"""``auth:refresh``: extend a live connection with a fresh token."""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any

from .. import schemas
from ..errors import CollabError, ErrorCode

if TYPE_CHECKING:
    from ..app import CollabApp, Connection


async def refresh(app: CollabApp, conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
    identity = app.verifier.verify(data["token"])
    if identity.user_id != conn.user_id:
        raise CollabError(
            ErrorCode.PERMISSION_DENIED, "The new token must be for the same user (sub)"
        )
    app.renew(conn, identity)
    expires = datetime.datetime.fromtimestamp(identity.expires_at, datetime.timezone.utc)
    return {"expires_at": expires.isoformat().replace("+00:00", "Z")}


EVENTS = {"auth:refresh": (schemas.AuthRefresh(), refresh)}
