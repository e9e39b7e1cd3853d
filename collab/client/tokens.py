"""Where tokens come from, and refreshing them before they expire.

A token is a string, or a provider: a plain or async callable (or any callable
returning an awaitable) that returns a fresh JWT. With a provider, every
handshake and every ``auth:refresh`` asks it again, so a reconnection never
presents a token that expired while the client was away.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Union

import jwt

from .errors import DISCONNECTED, CollabError, TokenProviderError

log = logging.getLogger("collab.client")

TokenProvider = Callable[[], Union[str, Awaitable[str]]]
#: an acked call: ``call(event, data)`` returns the raw ack
Call = Callable[[str, Any], Awaitable[Any]]

#: when to send ``auth:refresh``, as a share of the token's remaining lifetime
REFRESH_AT = 0.8


class TokenSource:
    """The current token, and the provider that makes new ones (if any)."""

    def __init__(self, token: str | TokenProvider | None = None,
                 provider: TokenProvider | None = None) -> None:
        if callable(token):
            if provider is not None:
                raise TypeError("give the provider as token or as token_provider, not both")
            token, provider = None, token
        elif token is not None and not isinstance(token, str):
            raise TypeError(f"token must be a str or a callable, not {type(token).__name__}")
        if provider is not None and not callable(provider):
            raise TypeError(f"token_provider must be callable, not {type(provider).__name__}")
        #: the token last given or obtained; what the refresh schedule reads ``exp`` from
        self.current: str | None = token
        self._provider = provider
        self._given_unused = token is not None

    @property
    def refreshable(self) -> bool:
        return self._provider is not None

    async def for_handshake(self) -> str | None:
        """The token to connect with: a string given up front the first time, then with a
        provider a fresh one each time; without one, the same string every time."""
        if self._given_unused or self._provider is None:
            self._given_unused = False
            return self.current
        return await self.fresh()

    async def fresh(self) -> str:
        """Ask the provider; raise :class:`TokenProviderError` if it fails."""
        assert self._provider is not None
        try:
            token = self._provider()
            if inspect.isawaitable(token):
                token = await token
        except Exception as exc:
            raise TokenProviderError(f"token provider raised {type(exc).__name__}",
                                     {"exception": type(exc).__name__}) from exc
        if not isinstance(token, str):
            raise TokenProviderError(
                f"token provider returned {type(token).__name__}, not a str")
        if not token:
            raise TokenProviderError("token provider returned an empty string")
        self.current = token
        return token


class TokenRefresher:
    """Sends ``auth:refresh`` with a fresh token at 80% of the current one's remaining
    lifetime, so the server does not end the connection at expiry. Only with a
    provider and a token whose ``exp`` can be read."""

    def __init__(self, tokens: TokenSource, call: Call,
                 report: Callable[[dict[str, Any]], None]) -> None:
        self._tokens = tokens
        self._call = call
        self._report = report  # to the ``error`` handlers
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
        except TokenProviderError as exc:
            # said once per try; the tries thin out towards expiry (80% of what is left,
            # at least a second apart), so a broken provider is not called in a loop
            log.warning("token refresh failed: %s", exc.message)
            self._report(exc.to_dict())
            self.schedule(min_delay=1.0)
        except CollabError as exc:
            if exc.code == DISCONNECTED:
                return  # the reconnection starts a new schedule
            log.warning("token refresh failed: %s %s", exc.code, exc.message)
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
