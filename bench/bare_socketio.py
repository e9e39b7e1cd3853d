"""A bare python-socketio server on Tornado doing the same room broadcast as collab.

usage: python bare_socketio.py PORT SECRET
"""

from __future__ import annotations

import asyncio
import datetime
import signal
import sys

import jwt
import socketio
import tornado.web


def main() -> None:
    port, secret = int(sys.argv[1]), sys.argv[2]
    sio = socketio.AsyncServer(async_mode="tornado", async_handlers=False,
                               cors_allowed_origins="*")
    seq = 0

    @sio.event
    async def connect(sid, environ, auth):
        try:
            claims = jwt.decode((auth or {}).get("token", ""), secret, algorithms=["HS256"],
                                options={"require": ["sub", "exp"]})
        except jwt.PyJWTError:
            raise socketio.exceptions.ConnectionRefusedError("unauthorized") from None
        await sio.save_session(sid, {"user": claims["sub"]})

    @sio.on("chat:create")
    async def create(sid, data):
        return {"ok": True, "chat": {"id": "bench", "members": data.get("members", [])}}

    @sio.on("chat:join")
    async def join(sid, data):
        await sio.enter_room(sid, "chat_" + data["chat_id"])
        return {"ok": True, "chat": {"id": data["chat_id"]}, "users": [], "messages": []}

    @sio.on("chat:message")
    async def message(sid, data):
        nonlocal seq
        seq += 1
        session = await sio.get_session(sid)
        msg = {"id": str(seq), "chat_id": data["chat_id"], "seq": seq,
               "user_id": session["user"], "content": data["content"],
               "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat()}
        await sio.emit("chat:message", {"message": msg}, room="chat_" + data["chat_id"])
        return {"ok": True, "message": msg}

    class Handler(socketio.get_tornado_handler(sio)):
        def get_compression_options(self):
            return None  # as collab's default and Node's: no permessage-deflate

    class Health(tornado.web.RequestHandler):
        def get(self):
            self.write("ok")

    async def run() -> None:
        app = tornado.web.Application([(r"/socket.io/", Handler), (r"/healthz", Health)])
        app.listen(port, "127.0.0.1")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()

    asyncio.run(run())


if __name__ == "__main__":
    main()
