"""What a handler may touch: the store, the rooms, publishing, the settings."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from ..auth import Identity, TokenVerifier
from ..broadcast import Broadcasts
from ..config import Settings
from ..connection import Connection
from ..livedocs import LiveDocuments
from ..membership import Membership
from ..store.base import Store


@dataclasses.dataclass(frozen=True, slots=True)
class Context:
    """Handed to every handler with the connection and the validated payload."""

    settings: Settings
    #: the store, timed (every call lands in collab_store_latency_seconds)
    store: Store
    #: room broadcasts, and stored items at their position
    broadcasts: Broadcasts
    #: joining, leaving and revoking
    rooms: Membership
    #: the live documents loaded on this node
    documents: LiveDocuments
    verifier: TokenVerifier
    #: swap a refreshed token's identity into a connection (auth:refresh)
    renew: Callable[[Connection, Identity], None]
