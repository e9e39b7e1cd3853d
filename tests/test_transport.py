"""Transport defaults: WebSocket without permessage-deflate unless configured."""

from __future__ import annotations

import aiohttp
import pytest
from harness import WAIT, make_settings
from rawsocket import RawSocket


async def negotiated_extensions(url: str) -> str | None:
    async with aiohttp.ClientSession() as session:
        ws_url = url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket"
        async with session.ws_connect(ws_url, compress=15) as ws:
            assert (await ws.receive_str(timeout=5)).startswith("0{")
            return ws._response.headers.get("Sec-WebSocket-Extensions")


async def test_permessage_deflate_is_off_by_default(server):
    assert await negotiated_extensions(server.url) is None


class TestCompressionConfigured:
    @pytest.fixture
    def settings(self):
        return make_settings(websocket_compression=True)

    async def test_permessage_deflate_when_configured(self, server):
        assert "permessage-deflate" in await negotiated_extensions(server.url)


async def test_a_refused_websocket_is_closed(server):
    """Engine.IO cannot answer a WebSocket it refuses (Tornado has sent 101 already) and
    left it open; the server closes it at once."""
    raw = await RawSocket.open(server.url, "&sid=no-such-session")
    try:
        assert await raw.closed(timeout=WAIT) == []
    finally:
        await raw.close()
