"""Event handlers, one module per area; each exports ``EVENTS``.

``EVENTS`` maps an event name to ``(schema, handler)``; a handler is
``async def handler(ctx, conn, data) -> dict`` returning the ack's result
fields, or raising :class:`~collab.errors.CollabError`. ``ctx`` is a
:class:`~collab.handlers.context.Context`: what a handler may touch.
"""

from __future__ import annotations

from . import auth, chat, documents

EVENTS = {**documents.EVENTS, **chat.EVENTS, **auth.EVENTS}
