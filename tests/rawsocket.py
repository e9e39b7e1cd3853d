"""A bare Engine.IO v4 / Socket.IO v5 WebSocket peer, for packets a client library won't send."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp


class RawSocket:
    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse):
        self.session = session
        self.ws = ws

    @classmethod
    async def connect(cls, url: str, token: str) -> RawSocket:
        session = aiohttp.ClientSession()
        ws_url = url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket"
        ws = await session.ws_connect(ws_url)
        raw = cls(session, ws)
        opening = await ws.receive_str(timeout=5)  # Engine.IO OPEN
        assert opening.startswith("0{"), opening
        await raw.send("0" + json.dumps({"token": token}))
        connected = await raw.recv()  # Socket.IO CONNECT
        assert connected.startswith("0{"), connected
        return raw

    async def recv(self, timeout: float = 5.0) -> str:
        """The next Socket.IO packet, answering Engine.IO pings on the way."""
        while True:
            msg = await asyncio.wait_for(self.ws.receive(), timeout)
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise ConnectionError(f"WebSocket {msg.type.name}")
            if msg.data == "2":
                await self.ws.send_str("3")
                continue
            return msg.data[1:] if msg.data.startswith("4") else msg.data

    async def send(self, packet: str) -> None:
        await self.ws.send_str("4" + packet)

    async def ack(self, ack_id: int, timeout: float = 5.0) -> Any:
        """Wait for the ack with ``ack_id`` and return its first argument."""
        prefix = f"3{ack_id}"
        while True:
            packet = await self.recv(timeout)
            if packet.startswith(prefix + "["):
                return json.loads(packet[len(prefix):])[0]

    async def close(self) -> None:
        await self.ws.close()
        await self.session.close()
