"""Role checks against the stored roles, on every event.

A user with no role at all gets ``NOT_FOUND`` whether or not the resource
exists, so ids cannot be probed; a user with too small a role gets
``PERMISSION_DENIED``. Admins pass every check but still get ``NOT_FOUND``
for what does not exist.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from .auth import Identity
from .errors import NotFound, PermissionDenied
from .store.base import Store

DOCUMENT_RANK = {"viewer": 1, "editor": 2, "owner": 3}
CHAT_RANK = {"member": 1, "owner": 2}


async def _require(
    what: str,
    ranks: dict[str, int],
    exists: Callable[[str], Awaitable[Any]],
    role_of: Callable[[str, str], Awaitable[str | None]],
    identity: Identity,
    rid: str,
    needed: str,
) -> str:
    if identity.is_admin:
        if await exists(rid) is None:
            raise NotFound(f"{what.capitalize()} {rid!r} not found")
        return "admin"
    role = await role_of(rid, identity.user_id)
    if role is None:
        raise NotFound(f"{what.capitalize()} {rid!r} not found")
    if ranks[role] < ranks[needed]:
        raise PermissionDenied(f"This needs the {needed} role on the {what}; you are {role}")
    return role


async def require_document_role(
    store: Store, identity: Identity, document_id: str, needed: str
) -> str:
    """Return the user's role on the document (``"admin"`` for admins) or raise."""
    return await _require("document", DOCUMENT_RANK, store.get_document,
                          store.get_document_role, identity, document_id, needed)


async def require_chat_role(store: Store, identity: Identity, chat_id: str, needed: str) -> str:
    """Return the user's role in the chat (``"admin"`` for admins) or raise."""
    return await _require("chat", CHAT_RANK, store.get_chat,
                          store.get_chat_role, identity, chat_id, needed)
