"""The Socket.IO Admin UI (python-socketio's ``instrument()``), off unless configured.

Signing in: the Admin UI's login form sends ``{username, password}`` in the CONNECT
of its ``/admin`` namespace. collab takes the password as a JWT, verified like any
other, and admits it only with the ``admin`` role; the username is ignored. So no
password lives in the configuration; an expired or forged token, or one without the
role, is refused at sign-in, and the UI's socket is disconnected when its token
expires (python-socketio checks it at CONNECT only).

Only python-socketio's ``production`` mode is offered. Its ``development`` mode sends
the Admin UI every socket's handshake (headers, query string: tokens included) and
the payload of every event in and out (``auth:refresh`` carries a token, chat
messages and documents their users' text), which a server that keeps credentials
out of its own logs should not hand to a browser tab. In production mode the UI
shows the server's counters: clients, polling clients, packets and bytes in and out.

``read_only`` (the default) leaves out the UI's actions (emit to, join, leave and
disconnect sockets). python-socketio 5.18 registers their handlers in development
mode only, while its config message offers them whenever not read-only; so when they
are configured here, their handlers are registered here.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from socketio.async_admin import InstrumentedAsyncServer

from .auth import TokenVerifier
from .errors import Unauthorized

#: the namespace the Admin UI connects to (its default)
NAMESPACE = "/admin"


def instrument(sio: Any, verifier: TokenVerifier,
               read_only: bool = True) -> InstrumentedAsyncServer:
    """Serve the Admin UI on ``sio``'s ``/admin`` namespace for admin-role tokens."""

    def admitted(auth: Any) -> bool:
        token = auth.get("password") if isinstance(auth, dict) else None
        try:
            identity = verifier.verify(token)
        except Unauthorized:
            return False
        return identity.is_admin

    admin = sio.instrument(auth=admitted, mode="production", read_only=read_only,
                           namespace=NAMESPACE)
    expiries: dict[str, asyncio.TimerHandle] = {}

    async def connect(sid: str, environ: Any, auth: Any = None) -> None:
        await admin.admin_connect(sid, environ, auth)  # (refuses what ``admitted`` does)
        identity = verifier.verify(auth["password"])
        # (a token may be valid for centuries: call_later wants a delay it can hold)
        delay = min(max(0.0, identity.expires_at + verifier.leeway - time.time()), 86400.0)
        expiries[sid] = asyncio.get_running_loop().call_later(
            delay, lambda: asyncio.ensure_future(sio.disconnect(sid, namespace=NAMESPACE)))

    def disconnect(sid: str, *_: Any) -> None:
        timer = expiries.pop(sid, None)
        if timer is not None:
            timer.cancel()

    sio.on("connect", connect, namespace=NAMESPACE)
    sio.on("disconnect", disconnect, namespace=NAMESPACE)
    if not read_only:
        for event, handler in (("emit", admin.admin_emit), ("join", admin.admin_enter_room),
                               ("leave", admin.admin_leave_room),
                               ("_disconnect", admin.admin_disconnect)):
            sio.on(event, handler, namespace=NAMESPACE)
    return admin
