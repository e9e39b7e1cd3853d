"""Role checks against the stored roles, on every event.

A user with no role at all gets ``NOT_FOUND`` whether or not the resource
exists, so ids cannot be probed; a user with too small a role gets
``PERMISSION_DENIED``. Admins pass every check but still get ``NOT_FOUND``
for what does not exist.
"""

from __future__ import annotations

from .auth import Identity
from .errors import NotFound, PermissionDenied
from .store.base import Store

DOCUMENT_RANK = {"viewer": 1, "editor": 2, "owner": 3}
CHAT_RANK = {"member": 1, "owner": 2}


async def require_document_role(
    store: Store, identity: Identity, document_id: str, needed: str
) -> str:
    """Return the user's role (``"admin"`` for admins) or raise."""
    if identity.is_admin:
        if await store.get_document(document_id) is None:
            raise NotFound(f"Document {document_id!r} not found")
        return "admin"
    role = await store.get_document_role(document_id, identity.user_id)
    if role is None:
        raise NotFound(f"Document {document_id!r} not found")
    if DOCUMENT_RANK[role] < DOCUMENT_RANK[needed]:
        raise PermissionDenied(f"This needs the {needed} role on the document; you are {role}")
    return role


async def require_chat_role(store: Store, identity: Identity, chat_id: str, needed: str) -> str:
    """Return the user's role (``"admin"`` for admins) or raise."""
    if identity.is_admin:
        if await store.get_chat(chat_id) is None:
            raise NotFound(f"Chat {chat_id!r} not found")
        return "admin"
    role = await store.get_chat_role(chat_id, identity.user_id)
    if role is None:
        raise NotFound(f"Chat {chat_id!r} not found")
    if CHAT_RANK[role] < CHAT_RANK[needed]:
        raise PermissionDenied(f"This needs the {needed} role in the chat; you are {role}")
    return role
