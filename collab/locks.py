"""Per-key asyncio locks that disappear when nobody holds or awaits them."""

from __future__ import annotations

import asyncio
import weakref


class KeyedLocks:
    """``async with locks[key]:`` serializes the work on one key within this process."""

    def __init__(self) -> None:
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def __getitem__(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    def __len__(self) -> int:
        return len(self._locks)
