"""The Redis registry: presence shared by every node, and node liveness.

Keys (all under ``{collab}:``; the variable part always comes last, so a room
or node id containing ``:`` cannot make two keys collide):

- ``conn:<sid>`` hash ``{user, node}``, ``conn-rooms:<sid>`` set of rooms
- ``room-sids:<room>`` hash ``sid -> user``: which connections are in the room
- ``room-users:<room>`` hash ``user -> number of that user's sids in the room``
- ``node-sids:<node>`` set of the node's sids, ``nodes`` set of node ids
- ``node:<node>`` the node's heartbeat, a string with a TTL

Every change is one Lua script, so "first connection of this user in the
room" and "this user is no longer present" are decided atomically even when
the user's tabs sit on different nodes. A node that stops refreshing its
heartbeat is purged by whichever survivor sweeps first (the sweep is a
script too, so two survivors cannot both report the same departure).

On a Redis Cluster a script may only touch keys of one hash slot, and these
scripts read and write a connection's keys, its rooms' keys and its node's
keys together: that is what makes "first connection of this user in the
room" atomic. So every key carries the hash tag ``{collab}`` (the first
``{...}`` of a key decides its slot, and ours comes first, so a ``{`` or ``}``
in a room, sid or node id changes nothing), and each script names the prefix
as its one key, which is how the cluster client routes it. The cost: all
presence lives on the one shard that owns that slot, and its load does not
spread as shards are added. Broadcasts, the heavy traffic, are sharded by
room separately (sharded pub/sub). A single Redis uses the same key names.

Each node also keeps its own connections and rooms in memory. That is what
it writes back when Redis comes back empty (or after it was purged while
alive but unreachable), and where it remembers removals that failed during
an outage so they still happen, and still announce ``user:left``, later.
When Redis no longer knows such a connection (it came back empty), the
departure is announced once every live node has written its state back
(one heartbeat TTL), in each room where its user then has no connection.
A join that got no answer is taken out again once Redis answers, since it
may have run all the same.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis

from ..errors import Unavailable
from ..redisconn import OUTAGES, SOCKET_TIMEOUT, RedisTarget, open_client
from ..tasks import cancel_and_wait
from .base import Registry

log = logging.getLogger("collab.registry")

#: every key's prefix; the hash tag puts them all in one cluster slot (see above)
PREFIX = "{collab}:"
HEARTBEAT_TTL = 10.0
HEARTBEAT_INTERVAL = 3.0
#: removals finished per heartbeat (one round trip each): after a long outage with
#: clients retrying their handshakes, thousands wait, and the beat must stay on time
REMOVALS_PER_BEAT = 500
#: handshakes that failed in an outage remembered for removal; past this, one more is
#: forgotten (it joined no room, so it changes no presence: only a stale key is left)
MAX_FAILED_ADDS = 10_000

T = TypeVar("T")


def unavailable_on_outage(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Turn a lost or slow Redis into :class:`~collab.errors.Unavailable`, within
    :data:`SOCKET_TIMEOUT` in all (a connect, a retry and a reply together)."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return await asyncio.wait_for(fn(*args, **kwargs), SOCKET_TIMEOUT)
        except OUTAGES as exc:
            raise Unavailable("Presence registry unavailable; retry") from exc

    return wrapper


# -- Lua ---------------------------------------------------------------------

# KEYS[1] is PREFIX: the scripts' one declared key, which routes them to its slot
_LUA_LIB = """
local P = KEYS[1]

-- take sid out of room; returns its user when that user is no longer present
local function drop(sid, room)
  local user = redis.call('HGET', P .. 'room-sids:' .. room, sid)
  if not user then return false end
  redis.call('HDEL', P .. 'room-sids:' .. room, sid)
  redis.call('SREM', P .. 'conn-rooms:' .. sid, room)
  local left = redis.call('HINCRBY', P .. 'room-users:' .. room, user, -1)
  if left > 0 then return false end
  redis.call('HDEL', P .. 'room-users:' .. room, user)
  return user
end

-- forget a connection; returns {room, user, room, user, ...} of departures
local function remove(sid, out)
  for _, room in ipairs(redis.call('SMEMBERS', P .. 'conn-rooms:' .. sid)) do
    local user = drop(sid, room)
    if user then
      table.insert(out, room)
      table.insert(out, user)
    end
  end
  local node = redis.call('HGET', P .. 'conn:' .. sid, 'node')
  if node then redis.call('SREM', P .. 'node-sids:' .. node, sid) end
  redis.call('DEL', P .. 'conn:' .. sid, P .. 'conn-rooms:' .. sid)
  return out
end

local function add(sid, user, node)
  redis.call('HSET', P .. 'conn:' .. sid, 'user', user, 'node', node)
  redis.call('SADD', P .. 'node-sids:' .. node, sid)
end

-- put sid in room; 1 when it is its user's first connection there
local function join(sid, user, room)
  if redis.call('HSETNX', P .. 'room-sids:' .. room, sid, user) == 0 then return 0 end
  redis.call('SADD', P .. 'conn-rooms:' .. sid, room)
  if redis.call('HINCRBY', P .. 'room-users:' .. room, user, 1) == 1 then return 1 end
  return 0
end

-- forget every connection of a node
local function purge(node, out)
  for _, sid in ipairs(redis.call('SMEMBERS', P .. 'node-sids:' .. node)) do
    remove(sid, out)
  end
  redis.call('DEL', P .. 'node-sids:' .. node)
  redis.call('SREM', P .. 'nodes', node)
  return out
end
"""

# ARGV: sid, user, node
_ADD = _LUA_LIB + "add(ARGV[1], ARGV[2], ARGV[3])\nreturn 1\n"
# ARGV: sid, user, node, room. The connection is written again so that a join
# also heals a node whose records were purged while it was unreachable.
_JOIN = _LUA_LIB + "add(ARGV[1], ARGV[2], ARGV[3])\nreturn join(ARGV[1], ARGV[2], ARGV[4])\n"
# ARGV: sid, room. Returns {1 if the sid was in the room, 1 if its user left}
_LEAVE = _LUA_LIB + """
local there = redis.call('HEXISTS', P .. 'room-sids:' .. ARGV[2], ARGV[1])
if drop(ARGV[1], ARGV[2]) then return {there, 1} end
return {there, 0}
"""
# ARGV: sid
_REMOVE = _LUA_LIB + "return remove(ARGV[1], {})\n"
# ARGV: sid. As _REMOVE, after {1 if Redis knew the connection else 0}
_FORGET = _LUA_LIB + "return remove(ARGV[1], {redis.call('EXISTS', P .. 'conn:' .. ARGV[1])})\n"
# ARGV: sid, user, node, rooms...; returns the rooms where the user is new
_RESTORE = _LUA_LIB + """
add(ARGV[1], ARGV[2], ARGV[3])
local first = {}
for i = 4, #ARGV do
  if join(ARGV[1], ARGV[2], ARGV[i]) == 1 then table.insert(first, ARGV[i]) end
end
return first
"""
# ARGV: node, ttl_ms, a new epoch. Returns {known, epoch}: known is 1 when the
# node was alive and registered before this beat (0: its records may be gone);
# the epoch names this Redis dataset and changes when Redis starts empty.
_HEARTBEAT = _LUA_LIB + """
local alive = redis.call('EXISTS', P .. 'node:' .. ARGV[1])
local member = redis.call('SISMEMBER', P .. 'nodes', ARGV[1])
redis.call('SET', P .. 'node:' .. ARGV[1], '1', 'PX', ARGV[2])
redis.call('SADD', P .. 'nodes', ARGV[1])
redis.call('SET', P .. 'epoch', ARGV[3], 'NX')
local known = 0
if alive == 1 and member == 1 then known = 1 end
return {known, redis.call('GET', P .. 'epoch')}
"""
# ARGV: this node. Purges every other node whose heartbeat expired.
_SWEEP = _LUA_LIB + """
local out = {}
for _, node in ipairs(redis.call('SMEMBERS', P .. 'nodes')) do
  if node ~= ARGV[1] and redis.call('EXISTS', P .. 'node:' .. node) == 0 then
    purge(node, out)
  end
end
return out
"""
# ARGV: node. Forgets the node entirely (a clean shutdown, or a restart
# under the same id clearing what its previous life left behind).
_PURGE = _LUA_LIB + """
local out = purge(ARGV[1], {})
redis.call('DEL', P .. 'node:' .. ARGV[1])
return out
"""


class _Script:
    """A registered script called with ``PREFIX`` as its key, so a cluster runs it on
    the node that owns the registry's slot.

    redis-py's EVALSHA answers NOSCRIPT by SCRIPT LOAD, which a cluster client sends
    to every master, and then runs it again: a node restarted empty, or a slot moved
    to another master, costs one extra round trip.
    """

    def __init__(self, client: aioredis.Redis | aioredis.RedisCluster, source: str) -> None:
        self._script = client.register_script(source)

    async def __call__(self, args: list[Any]) -> Any:
        return await self._script(keys=[PREFIX], args=args)


def _pairs(flat: list[str]) -> list[tuple[str, str]]:
    return list(zip(flat[0::2], flat[1::2], strict=True))


@dataclasses.dataclass
class _Removal:
    """A connection that closed while Redis could not be told, and where it was."""

    user_id: str | None
    #: the rooms to announce its user's departure from, should Redis have lost them
    rooms: frozenset[str] = frozenset()
    #: a handshake whose registration failed (counted against MAX_FAILED_ADDS)
    failed_add: bool = False


class _Gate:
    """Many registry operations at once, or one resync alone.

    A resync writes this node's remembered state back; a join or leave
    running at the same time could be undone by it, so it waits for them.
    """

    def __init__(self) -> None:
        self._running = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._open = asyncio.Event()
        self._open.set()

    @contextlib.asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        await self._open.wait()
        self._running += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._running -= 1
            if not self._running:
                self._idle.set()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        self._open.clear()
        try:
            await self._idle.wait()
            yield
        finally:
            self._open.set()


class RedisRegistry(Registry):
    """Presence across nodes in one Redis or one Redis Cluster (all of it in one slot)."""

    def __init__(
        self,
        url: str,
        node_id: str,
        *,
        heartbeat_ttl: float = HEARTBEAT_TTL,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
    ) -> None:
        super().__init__(node_id)
        self.url = url
        self.target = RedisTarget.parse(url)
        self.display_url = self.target.display
        self.heartbeat_ttl = heartbeat_ttl
        self.heartbeat_interval = heartbeat_interval
        self._redis: aioredis.Redis | aioredis.RedisCluster | None = None
        self._task: asyncio.Task[None] | None = None
        # this node's own state: what a resync writes back
        self._users: dict[str, str] = {}  # sid -> user_id
        self._rooms: dict[str, set[str]] = {}  # sid -> rooms
        self._removals: dict[str, _Removal] = {}  # sids whose removal failed in an outage
        self._failed_adds = 0  # of those, handshakes that were never admitted
        #: (room, user) departures Redis may have lost: announced unless the user is
        #: present there once every node has written its state back
        self._orphans: set[tuple[str, str]] = set()
        #: loop time until which other nodes may still be writing back an emptied Redis
        self._settled_at = 0.0
        #: (sid, room) of joins that failed but may have run: taken out again, unannounced
        self._undo: set[tuple[str, str]] = set()
        # unsent announcements, oldest first
        self._backlog: collections.deque[tuple[str, str, str, list[str]]] = collections.deque()
        self._gate = _Gate()
        self._outage = False
        self._epoch: str | None = None  # the Redis dataset this node registered in
        self._lost = False  # this node's records must be written back
        self._announce_return = False  # ... and its users announced as joined again

    # -- lifecycle ---------------------------------------------------------

    async def open(self) -> None:
        """Connect, clear what an earlier process with this node id left, start beating."""
        try:
            await self._open()
        except OUTAGES as exc:  # said once at start, to the operator
            raise Unavailable(f"registry {self.display_url} unreachable: {exc}") from exc

    async def _open(self) -> None:
        if self._redis is None:
            self._redis = open_client(self.target, decode_responses=True)
            script = functools.partial(_Script, self._redis)
            self._add, self._join, self._leave = script(_ADD), script(_JOIN), script(_LEAVE)
            self._remove, self._restore = script(_REMOVE), script(_RESTORE)
            self._forget = script(_FORGET)
            self._heartbeat, self._sweep, self._purge = (
                script(_HEARTBEAT), script(_SWEEP), script(_PURGE)
            )
        leftovers = _pairs(await self._purge(args=[self.node_id]))
        self._queue("user:left", leftovers)
        await self._beat()
        await self._flush_backlog()
        self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        """Stop beating and remove this node's connections and heartbeat."""
        task, self._task = self._task, None
        await cancel_and_wait(task)
        if self._redis is not None:
            await self._leave_cluster()
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def _leave_cluster(self) -> None:
        try:
            gone = _pairs(await self._purge(args=[self.node_id]))
            await self._announce("user:left", gone)
        except OUTAGES:
            log.warning("Redis unreachable at shutdown; other nodes will purge node %s "
                        "when its heartbeat expires", self.node_id)
        except Exception:  # noqa: BLE001 - shutting down regardless
            log.exception("error removing node %s from the registry", self.node_id)
        self._users.clear()
        self._rooms.clear()
        self._removals.clear()
        self._failed_adds = 0
        self._orphans.clear()
        self._undo.clear()

    # -- Registry ----------------------------------------------------------

    @unavailable_on_outage
    async def ping(self) -> None:
        assert self._redis is not None, "open() first"
        await self._redis.ping()

    @unavailable_on_outage
    async def add_connection(self, sid: str, user_id: str) -> None:
        async with self._gate.shared():
            try:
                await self._add(args=[sid, user_id, self.node_id])
            except BaseException:  # an outage, or the deadline
                # refused, yet the script may have run before the reply was lost
                if self._failed_adds < MAX_FAILED_ADDS and sid not in self._removals:
                    self._failed_adds += 1
                    self._removals[sid] = _Removal(user_id, failed_add=True)
                raise
            self._users[sid] = user_id
            self._rooms[sid] = set()

    async def remove_connection(self, sid: str) -> list[tuple[str, str]]:
        user_id = self._users.pop(sid, None)
        rooms = frozenset(self._rooms.pop(sid, ()))
        try:
            known, gone = await asyncio.wait_for(self._remove_now(sid), SOCKET_TIMEOUT)
        except BaseException as exc:
            # the connection is gone either way: finish removing it once Redis is back,
            # and announce then the departures that could not be announced now
            self._removals.setdefault(sid, _Removal(user_id, rooms))
            if isinstance(exc, OUTAGES):
                raise Unavailable("Presence registry unavailable; retry") from exc
            raise
        if not known and user_id is not None:
            self._lost_departures(user_id, rooms)  # Redis came back empty, unnoticed yet
        self._orphans.difference_update(gone)
        return gone

    async def _remove_now(self, sid: str) -> tuple[bool, list[tuple[str, str]]]:
        async with self._gate.shared():
            known, *flat = await self._forget(args=[sid])
        return bool(known), _pairs(flat)

    def _lost_departures(self, user_id: str, rooms: frozenset[str]) -> None:
        """Redis lost this user's connection in ``rooms``: nobody was told it left."""
        self._orphans.update((room, user_id) for room in rooms)

    @unavailable_on_outage
    async def join(self, sid: str, room: str) -> bool:
        user_id = self._users.get(sid)
        if user_id is None:  # disconnected before the join ran
            return False
        rejoin = room in self._rooms.get(sid, ())
        self._undo.discard((sid, room))
        async with self._gate.shared():
            try:
                first = await self._join(args=[sid, user_id, self.node_id, room])
            except BaseException:  # an outage, or the deadline
                # No reply, yet the script may have run (or will, when a hung Redis
                # wakes up): take the entry out again once Redis answers. Until then
                # a leave of it has nothing to do, so undoing the join costs no wait.
                if not rejoin:
                    self._undo.add((sid, room))
                raise
            rooms = self._rooms.get(sid)
            if rooms is None:
                # disconnected while joining: undo it, and since the user is then
                # not announced as joined, do not announce them leaving either
                try:
                    gone = _pairs(await self._remove(args=[sid]))
                except BaseException:
                    self._undo.add((sid, room))  # (taken out, unannounced, once Redis answers)
                    raise
                self._queue("user:left", [p for p in gone if not first or p != (room, user_id)])
                return False
            rooms.add(room)
        return bool(first)

    @unavailable_on_outage
    async def leave(self, sid: str, room: str) -> bool:
        if (sid, room) in self._undo:  # a failed join, never announced: undone later
            return False
        user_id = self._users.get(sid)
        async with self._gate.shared():
            there, gone = await self._leave(args=[sid, room])
            rooms = self._rooms.get(sid, set())
            if not there and room in rooms and user_id is not None:
                self._lost_departures(user_id, frozenset((room,)))
            rooms.discard(room)
        if gone:
            self._orphans.discard((room, user_id or ""))
        return bool(gone)

    @unavailable_on_outage
    async def room_users(self, room: str) -> list[str]:
        assert self._redis is not None, "open() first"
        return sorted(await self._redis.hkeys(PREFIX + "room-users:" + room))

    def connection_count(self) -> int:
        return len(self._users)

    # -- liveness ----------------------------------------------------------

    async def _run(self) -> None:
        """Every few seconds: beat, repair, finish failed removals, purge dead nodes."""
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            try:
                await self._beat()
                if self._outage:
                    log.info("Redis reachable again (node %s)", self.node_id)
                    self._outage = False
            except OUTAGES as exc:
                if not self._outage:
                    log.warning("Redis unreachable (node %s): %s", self.node_id, exc)
                    self._outage = True
            except Exception:  # noqa: BLE001 - keep the heartbeat alive
                log.exception("registry heartbeat failed (node %s)", self.node_id)
            await self._flush_backlog()

    async def _beat(self) -> None:
        ttl_ms = int(self.heartbeat_ttl * 1000)
        known, epoch = await self._heartbeat(args=[self.node_id, ttl_ms, uuid.uuid4().hex])
        if not known:
            self._lost = True
            # The same epoch: survivors purged this node (it could not beat in
            # time) and told everyone its users left, so their return is news.
            # A new one: Redis came back empty, and nobody was told anything.
            if epoch == self._epoch:
                self._announce_return = True
                # the survivors announced the departures of every connection they purged
                for removal in self._removals.values():
                    removal.rooms = frozenset()
                self._orphans.clear()
            else:
                # every live node beats, so writes its state back, within one TTL
                self._settled_at = asyncio.get_running_loop().time() + self.heartbeat_ttl
        self._epoch = epoch
        if self._lost:
            await self.resync(announce=self._announce_return)
            self._lost = self._announce_return = False
        await self._finish_undos()
        await self._finish_removals()
        dead = _pairs(await self._sweep(args=[self.node_id]))
        if dead:
            log.info("purged connections of dead nodes: %d departures", len(dead))
        self._queue("user:left", dead)

    async def _finish_undos(self) -> None:
        """Take out again what joins that failed in an outage may have put in."""
        if not self._undo:
            return
        async with self._gate.exclusive():  # no join of the same entry in between
            for sid, room in list(self._undo):
                if sid in self._users or sid in self._removals:  # the removal does the rest
                    await self._leave(args=[sid, room])
                else:  # removed since: a late join wrote the whole connection back
                    await self._remove(args=[sid])
                self._undo.discard((sid, room))

    async def _finish_removals(self) -> None:
        """Remove what closed during an outage, and announce the departures."""
        for sid, removal in list(self._removals.items())[:REMOVALS_PER_BEAT]:
            known, *flat = await self._forget(args=[sid])
            del self._removals[sid]
            if removal.failed_add:
                self._failed_adds -= 1
            if known:
                self._queue("user:left", _pairs(flat))
            elif removal.user_id is not None:
                # Redis lost it (it came back empty) or removed it without a reply
                # reaching us: either way nobody was told
                self._lost_departures(removal.user_id, removal.rooms)
        if not self._orphans or asyncio.get_running_loop().time() < self._settled_at:
            return
        assert self._redis is not None
        for room, user_id in sorted(self._orphans):
            if not await self._redis.hexists(PREFIX + "room-users:" + room, user_id):
                self._queue("user:left", [(room, user_id)])  # no other tab of theirs there
            self._orphans.discard((room, user_id))

    async def resync(self, announce: bool = False) -> None:
        """Write this node's live connections and rooms back into Redis.

        Runs when the heartbeat finds this node unknown: Redis restarted
        empty, or survivors purged this node while it could not reach Redis.
        With ``announce``, users who become present again in a room are
        announced there with ``user:joined``.
        """
        if not self._users:
            return
        async with self._gate.exclusive():
            log.info("re-registering %d connections of node %s", len(self._users), self.node_id)
            for sid, user_id in list(self._users.items()):
                rooms = sorted(self._rooms.get(sid, ()))
                first = await self._restore(args=[sid, user_id, self.node_id, *rooms])
                for room in first if announce else ():
                    # the user's own tabs here never saw them leave
                    own = [s for s, u in self._users.items()
                           if u == user_id and room in self._rooms.get(s, ())]
                    self._backlog.append(("user:joined", room, user_id, own))

    # -- announcements -----------------------------------------------------

    def _queue(self, event: str, pairs: list[tuple[str, str]]) -> None:
        self._backlog.extend((event, room, user_id, []) for room, user_id in pairs)

    async def _announce(self, event: str, pairs: list[tuple[str, str]]) -> None:
        self._queue(event, pairs)
        await self._flush_backlog()

    async def _flush_backlog(self) -> None:
        """Send presence changes found outside a call, once the app listens."""
        if self.on_presence is None:
            return
        while self._backlog:
            event, room, user_id, skip = self._backlog.popleft()
            try:
                await self.on_presence(event, room, user_id, skip)
            except Exception:  # noqa: BLE001 - one failed emit must not stop the rest
                log.exception("could not announce %s of %s in %s", event, user_id, room)
