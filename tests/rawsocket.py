"""Bare Engine.IO v4 / Socket.IO v5 peers (WebSocket, long-polling), for packets a client
library won't send and for the bytes exactly as the server sent them."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp


class RawSocket:
    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse,
                 eio_sid: str | None = None):
        self.session = session
        self.ws = ws
        self.eio_sid = eio_sid

    @classmethod
    async def open(cls, url: str, query: str = "") -> RawSocket:
        """A WebSocket with the Engine.IO handshake done (``query`` is appended to the URL;
        with one, e.g. ``&sid=...``, no OPEN is awaited)."""
        session = aiohttp.ClientSession()
        ws_url = url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket" + query
        try:
            ws = await session.ws_connect(ws_url)
        except BaseException:
            await session.close()
            raise
        raw = cls(session, ws)
        if not query:
            opening = await ws.receive_str(timeout=5)  # Engine.IO OPEN
            assert opening.startswith("0{"), opening
            raw.eio_sid = json.loads(opening[1:])["sid"]
        return raw

    @classmethod
    async def connect(cls, url: str, token: str) -> RawSocket:
        """A WebSocket connected to the default namespace with ``token``."""
        raw = await cls.open(url)
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

    async def send_frame(self, frame: str | bytes) -> None:
        """One WebSocket message exactly as given: no Engine.IO MESSAGE prefix."""
        if isinstance(frame, bytes):
            await self.ws.send_bytes(frame)
        else:
            await self.ws.send_str(frame)

    async def packet(self, prefix: str, timeout: float = 5.0) -> str:
        """The next Socket.IO packet starting with ``prefix``, as the text it came as
        (a text frame's payload: its UTF-8 is what crossed the wire)."""
        while True:
            packet = await self.recv(timeout)
            if packet.startswith(prefix):
                return packet

    async def ack(self, ack_id: int, timeout: float = 5.0) -> Any:
        """Wait for the ack with ``ack_id`` and return its first argument."""
        prefix = f"3{ack_id}"
        while True:
            packet = await self.recv(timeout)
            if packet.startswith(prefix + "["):
                return json.loads(packet[len(prefix):])[0]

    async def closed(self, timeout: float = 5.0) -> list[str]:
        """Wait until the server closes the WebSocket; the Socket.IO packets it sent first.

        Raises ``TimeoutError`` if it stays open for ``timeout`` seconds.
        """
        packets = []
        async with asyncio.timeout(timeout):
            while True:
                try:
                    packets.append(await self.recv(timeout))
                except ConnectionError:
                    return packets

    async def close(self) -> None:
        await self.ws.close()
        await self.session.close()


class RawPolling:
    """A bare Engine.IO v4 long-polling peer: each poll's HTTP body exactly as sent."""

    def __init__(self, session: aiohttp.ClientSession, url: str, eio_sid: str) -> None:
        self.session = session
        self.url = url
        self.eio_sid = eio_sid
        #: Engine.IO packets of the last poll not asked for yet
        self.received: list[bytes] = []

    @classmethod
    async def open(cls, url: str) -> RawPolling:
        """A session with the Engine.IO handshake done, not connected to a namespace."""
        session = aiohttp.ClientSession()
        base = url + "/socket.io/?EIO=4&transport=polling"
        try:
            async with session.get(base) as resp:
                opening = await resp.text()  # Engine.IO OPEN
        except BaseException:
            await session.close()
            raise
        assert opening.startswith("0{"), opening
        sid = json.loads(opening[1:])["sid"]
        return cls(session, f"{base}&sid={sid}", sid)

    @classmethod
    async def connect(cls, url: str, token: str) -> RawPolling:
        raw = await cls.open(url)
        await raw.send("0" + json.dumps({"token": token}))
        connected = await raw.packet("0")  # Socket.IO CONNECT
        assert connected.startswith(b"0{"), connected
        return raw

    async def send(self, packet: str) -> None:
        async with self.session.post(self.url, data=("4" + packet).encode()) as resp:
            assert resp.status == 200, resp.status

    async def post(self, body: str | bytes) -> tuple[int, str]:
        """POST ``body`` exactly as given; the status and the text of the answer."""
        async with self.session.post(self.url, data=body) as resp:
            return resp.status, await resp.text()

    async def get(self, timeout: float = 5.0) -> tuple[int, bytes]:
        """One GET, whatever its status: the status and the body."""
        async with self.session.get(self.url, timeout=aiohttp.ClientTimeout(timeout)) as resp:
            return resp.status, await resp.read()

    async def poll(self, timeout: float = 5.0) -> bytes:
        """One poll's body: Engine.IO packets separated by ``\\x1e``."""
        status, body = await self.get(timeout)
        assert status == 200, status
        return body

    async def packet(self, prefix: str, timeout: float = 5.0) -> bytes:
        """The next Socket.IO packet starting with ``prefix``, as the bytes it came as,
        answering Engine.IO pings on the way."""
        while True:
            if not self.received:
                self.received = (await self.poll(timeout)).split(b"\x1e")
            eio_packet = self.received.pop(0)
            if eio_packet == b"2":
                async with self.session.post(self.url, data=b"3") as resp:
                    assert resp.status == 200, resp.status
            elif eio_packet.startswith(b"4" + prefix.encode()):
                return eio_packet[1:]

    async def close(self) -> None:
        await self.session.close()
