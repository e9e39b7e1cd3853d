"""Where tokens come from, and refreshing them before they expire."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Union

import jwt

from .errors import DISCONNECTED, CollabError

log = logging.getLogger("collab.client")

TokenProvider = Callable[[], Union[str, Awaitable[str]]]
#: an acked call: ``call(event, data)`` returns the raw ack
Call = Callable[[str, Any], Awaitable[Any]]

#: when to send ``auth:refresh``, as a share of the token's remaining lifetime
REFRESH_AT = 0.8


class TokenSource:
    """The current token, and the provider that makes new ones (if any)."""

    def __init__(self, token: str | None = None, provider: TokenProvider | None = None
                 ) -> None:
        #: the token last given or obtained
        self.current = token
        self._provider = provider

    @property
    def refreshable(self) -> bool:
        return self._provider is not None

    async def fresh(self) -> str:
        """Ask the provider for a new token, and keep it as the current one."""
        assert self._provider is not None
        token = self._provider()
        if inspect.isawaitable(token):
            token = await token
        if not isinstance(token, str) or not token:
            raise CollabError("UNAUTHORIZED", "token_provider returned no token")
        self.current = token
        return token


class TokenRefresher:
    """Sends ``auth:refresh`` with a fresh token at 80% of the current one's remaining
    lifetime, so the server does not end the connection at expiry. Only with a
    provider and a token whose ``exp`` can be read."""

    def __init__(self, tokens: TokenSource, call: Call) -> None:
        self._tokens = tokens
        self._call = call
        self._task: asyncio.Task | None = None

    def schedule(self, min_delay: float = 0.0) -> None:
        self.cancel()
        expires = expiry(self._tokens.current)
        if not self._tokens.refreshable or expires is None:
            return
        remaining = expires - time.time()
        if remaining <= 0:
            return
        delay = max(min_delay, remaining * REFRESH_AT)
        if delay < remaining:
            self._task = asyncio.create_task(self._refresh_after(delay))

    def cancel(self) -> None:
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
        self._task = None

    async def _refresh_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            token = await self._tokens.fresh()
            ack = await self._call("auth:refresh", {"token": token})
        except CollabError as exc:
            if exc.code == DISCONNECTED:
                return  # the reconnection starts a new schedule
            log.warning("token refresh failed: %s %s", exc.code, exc.message)
            self.schedule(min_delay=1.0)
        except Exception as exc:  # noqa: BLE001 - a failing token_provider: try again later
            log.warning("token refresh failed: %r", exc)
            self.schedule(min_delay=1.0)
        else:
            if isinstance(ack, dict) and ack.get("ok"):
                self.schedule()
            else:  # refused: the server sent `error`, and will disconnect at expiry
                error = ack.get("error") if isinstance(ack, dict) else None
                log.warning("auth:refresh refused: %s",
                            error.get("code") if isinstance(error, dict) else error)


def expiry(token: str | None) -> float | None:
    """The token's ``exp``, read without verifying: only to time the refresh."""
    if not token:
        return None
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return None
    exp = claims.get("exp")
    return float(exp) if isinstance(exp, (int, float)) else None
