"""Engine.IO's Tornado handler, with the request checks it lacks.

python-engineio trusts what reaches its handler in ways a server on the open
internet cannot: a WebSocket it refuses is left open (it cannot answer one
once Tornado has sent 101). :func:`guarded_handler` takes care of that at the
Tornado level.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import engineio

log = logging.getLogger("collab.transport")


def guarded_handler(base: type, server: engineio.AsyncServer) -> type:
    """``base`` (Engine.IO's Tornado handler for ``server``) with checks before Engine.IO.

    - A WebSocket is closed as soon as Engine.IO is done with it: when it
      refused the request (an unknown or already upgraded ``sid``, a bad
      version) that is at once, where Engine.IO itself would leave it open.
    """

    class GuardedHandler(base):  # type: ignore[misc, valid-type]
        _serving: asyncio.Task | None = None

        async def open(self, *args: Any, **kwargs: Any) -> None:
            # instead of Engine.IO's open, which starts handle_request and forgets it;
            # Tornado reads no message until open returns, so run it as a task
            self._serving = asyncio.ensure_future(self._serve())

        async def _serve(self) -> None:
            try:
                await server.handle_request(self)
            except Exception as exc:  # noqa: BLE001 - Engine.IO's reader gave up
                log.warning("WebSocket from %s failed: %s", self.request.remote_ip,
                            type(exc).__name__)
            finally:
                self.close()  # no-op when Engine.IO closed it already

    return GuardedHandler
