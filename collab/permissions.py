"""Role checks against the stored roles, on every event.

A user with no role at all gets ``NOT_FOUND`` whether or not the resource
exists, so ids cannot be probed; a user with too small a role gets
``PERMISSION_DENIED``. Admins pass every check but still get ``NOT_FOUND``
for what does not exist.

A connection keeps the roles it was found to have (:class:`RoleCache`), so that
the check of a message or an update is a dict lookup instead of a store read
(measured: a quarter of a chat message's time in the server, on another thread).
It holds what was granted, never a refusal, so a new grant counts at once. What
can take a role away forgets it first:

- chat roles are never lowered or removed (no event does either), so they stay;
- a document role changes with ``documents:share``, on any node. A node alone
  (no Redis) sees every share and makes every connection of that user forget
  the role (:meth:`collab.membership.Membership.forget_roles`); with other nodes
  a downgrade does not reach them, so there document roles are not kept at all,
  nor where role reads may come from a MongoDB secondary (a read after the
  forget could bring the old role back). So a node alone assumes it is the
  only writer of its store: a second ``collab serve`` on the same file without
  Redis, or a hand edit of the roles table, is seen by a connection only once it
  reconnects (docs/deployment.md);
- a revocation's take-out forgets the room's role on each connection of the user
  here, whether or not it was in the room;
- a refreshed token (a new identity) starts with an empty cache.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from .auth import Identity
from .errors import NotFound, PermissionDenied
from .store.base import Store

#: roles kept per connection; past this the cache starts again (a client that touches
#: more chats and documents than this reads roles again; worst case a few KiB each)
MAX_KEPT = 64

DOCUMENT_RANK = {"viewer": 1, "editor": 2, "owner": 3}
CHAT_RANK = {"member": 1, "owner": 2}


class RoleCache:
    """One connection's roles as last read from the store, by kind and id.

    ``generation`` moves on every forget, so that a read that began before a
    role was taken away cannot put the old role back when it completes.
    """

    __slots__ = ("_kinds", "_documents", "generation")

    def __init__(self, documents: bool = True) -> None:
        self._kinds: dict[str, dict[str, str]] | None = None  # made on the first role kept
        self._documents = documents
        self.generation = 0

    def get(self, kind: str, rid: str) -> str | None:
        kept = self._kinds.get(kind) if self._kinds is not None else None
        return kept.get(rid) if kept is not None else None

    def put(self, kind: str, rid: str, role: str, generation: int) -> None:
        """Keep ``role``, read when the cache was at ``generation``, unless a forget came
        since (or document roles are not kept here)."""
        if generation != self.generation or (kind == "document" and not self._documents):
            return
        if self._kinds is None or sum(map(len, self._kinds.values())) >= MAX_KEPT:
            self._kinds = {}  # (bounded: a client touching many ids reads again)
        self._kinds.setdefault(kind, {})[rid] = role

    def forget(self, kind: str, rid: str) -> None:
        self.generation += 1
        if self._kinds is not None and (kept := self._kinds.get(kind)) is not None:
            kept.pop(rid, None)

    def clear(self) -> None:
        self.generation += 1
        self._kinds = None


async def _require(
    what: str,
    ranks: dict[str, int],
    exists: Callable[[str], Awaitable[Any]],
    role_of: Callable[[str, str], Awaitable[str | None]],
    identity: Identity,
    rid: str,
    needed: str,
    roles: RoleCache | None,
) -> str:
    role = roles.get(what, rid) if roles is not None else None
    if role is None:
        generation = roles.generation if roles is not None else 0
        if identity.is_admin:
            if await exists(rid) is None:
                raise NotFound(f"{what.capitalize()} {rid!r} not found")
            role = "admin"
        else:
            role = await role_of(rid, identity.user_id)
            if role is None:
                raise NotFound(f"{what.capitalize()} {rid!r} not found")
        if roles is not None:
            roles.put(what, rid, role, generation)
    if role == "admin":
        return role
    if ranks[role] < ranks[needed]:
        raise PermissionDenied(f"This needs the {needed} role on the {what}; you are {role}")
    return role


async def require_document_role(
    store: Store, identity: Identity, document_id: str, needed: str,
    roles: RoleCache | None = None,
) -> str:
    """Return the user's role on the document (``"admin"`` for admins) or raise; with
    ``roles``, from the connection's cache when it holds the role."""
    return await _require("document", DOCUMENT_RANK, store.get_document,
                          store.get_document_role, identity, document_id, needed, roles)


async def require_chat_role(store: Store, identity: Identity, chat_id: str, needed: str,
                            roles: RoleCache | None = None) -> str:
    """Return the user's role in the chat (``"admin"`` for admins) or raise; with
    ``roles``, from the connection's cache when it holds the role."""
    return await _require("chat", CHAT_RANK, store.get_chat,
                          store.get_chat_role, identity, chat_id, needed, roles)
