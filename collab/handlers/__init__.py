"""Event handlers, one module per area; each exports ``EVENTS``.

``EVENTS`` maps an event name to ``(schema, handler)``; a handler is
``async def handler(app, conn, data) -> dict`` returning the ack's result
fields, or raising :class:`~collab.errors.CollabError`.
"""

from __future__ import annotations

from . import auth, chat, documents

EVENTS = {**documents.EVENTS, **chat.EVENTS, **auth.EVENTS}
