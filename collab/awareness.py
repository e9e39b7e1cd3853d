"""y-protocols awareness for one room: relayed, never stored (PROTOCOL "Live documents").

An awareness update is a varuint count, then per entry a varuint client id, a varuint
clock and a varstring of JSON: the client's state, ``null`` once it is gone
(y-protocols src/awareness.js). An entry is accepted when its clock is newer than the
one known for that client (an unknown client counts as clock 0), or equal with a
``null`` state while a state is held: exactly ``applyAwarenessUpdate``'s rule, so the
room here agrees with every y-protocols peer on what is current.

pycrdt ships an ``Awareness`` class, but it does not fit a relay: it is tied to a
``Doc`` and announces a state of its own, knows nothing of connections, bounds
nothing, and its encoder writes string lengths in code points rather than bytes.

What this adds for a server:

* which connection announced which client ids. A connection announces an id when an
  entry for it *from that connection* is accepted with a state; re-sending the states
  of others announces nothing, since their clocks are not newer. When the connection
  goes, :meth:`RoomAwareness.remove_connection` gives the update that removes all of
  them at once, instead of the peers' 30-second timeout.
* whose a state is: an entry for a client id whose present state another user's
  connection announced is not accepted from a connection of a different user (not an
  error: y-protocols peers send such entries all the time, re-sending what they
  received and removing what timed out on their side). Without it any member could
  replace or remove everyone else's cursor. The same user may take an id over (a
  client that reconnected). Another node's relay names the user its states came
  from (the origin node checked them), so every node knows whose each state is.
* bounds: states per connection and per room, and bytes per state, refused whole
  (nothing of an update is applied when any entry is refused; another node's relay,
  which carries all of its connections' states, is bounded per room only); removed
  clients are remembered (their last clock, so a late re-send of an old state is not
  taken for new) up to a cap, oldest forgotten first.
* expiry: a state not renewed within ``timeout`` seconds is gone, as every
  y-protocols peer decides for itself (``outdatedTimeout``, 30 s; clients renew
  every 15 s). :meth:`RoomAwareness.expire` gives the update that removes them. This
  is what clears the states another node relayed once that node dies: nobody is left
  to send their removal.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Hashable
from dataclasses import dataclass

from .errors import InvalidInput, PayloadTooLarge
from .lib0 import Lib0Error, Reader, var_string, var_uint

#: One client's state, as JSON bytes. Cursors, selections, a name and a colour take a
#: few hundred; 16 KiB leaves room for richer presence without letting a client make
#: every peer store and re-send megabytes.
MAX_STATE_BYTES = 16 * 1024
#: Client ids one connection may hold announced. A provider announces one per
#: document; a few more cover clients that share a socket between documents.
MAX_IDS_PER_CONNECTION = 8
#: States held for one room: the live members' cursors.
MAX_STATES_PER_ROOM = 1024
#: Clocks remembered for removed clients, so stale re-sends stay stale.
MAX_REMOVED_PER_ROOM = 4 * MAX_STATES_PER_ROOM
#: Seconds a state lives without renewal: y-protocols' ``outdatedTimeout`` (its clients
#: renew every half of it). The ``awareness_timeout`` setting, by default.
OUTDATED_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class Entry:
    """One awareness entry; ``state`` is the JSON text, None for a removal."""

    client_id: int
    clock: int
    state: str | None


def decode_update(data: bytes) -> list[Entry]:
    """Decode an awareness update; InvalidInput for anything malformed (including
    trailing bytes and JSON that JavaScript's ``JSON.parse`` would not read)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidInput("awareness update must be bytes")
    reader = Reader(bytes(data))
    try:
        count = reader.var_uint()
        entries = []
        for _ in range(count):
            client_id = reader.var_uint()
            clock = reader.var_uint()
            raw = reader.var_string()
            entries.append(Entry(client_id, clock, _checked_json(raw)))
        reader.end()
    except Lib0Error as exc:
        raise InvalidInput(f"awareness update cannot be decoded: {exc}") from None
    return entries


def encode_update(entries: list[Entry]) -> bytes:
    """Encode entries as one awareness update (``null`` for removed states)."""
    parts = [var_uint(len(entries))]
    for entry in entries:
        parts.append(var_uint(entry.client_id))
        parts.append(var_uint(entry.clock))
        parts.append(var_string("null" if entry.state is None else entry.state))
    return b"".join(parts)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _checked_json(raw: str) -> str | None:
    """The state's JSON text as received (relayed byte for byte), None for ``null``."""
    try:
        value = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise Lib0Error(f"state is not JSON: {exc}") from None
    return None if value is None else raw


class RoomAwareness:
    """The awareness states of one room and which connection announced each."""

    def __init__(self, *, max_state_bytes: int = MAX_STATE_BYTES,
                 max_ids_per_connection: int = MAX_IDS_PER_CONNECTION,
                 max_states: int = MAX_STATES_PER_ROOM,
                 max_removed: int = MAX_REMOVED_PER_ROOM,
                 timeout: float = OUTDATED_TIMEOUT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_state_bytes = max_state_bytes
        self.max_ids_per_connection = max_ids_per_connection
        self.max_states = max_states
        self.max_removed = max_removed
        self.timeout = timeout
        self._clock_now = clock
        #: client id -> its current entry (always with a state)
        self._states: dict[int, Entry] = {}
        #: client id -> when its state was last accepted (``clock`` time)
        self._renewed: dict[int, float] = {}
        #: client id -> last clock, for clients removed
        self._removed: OrderedDict[int, int] = OrderedDict()
        #: connection -> client ids it announced; and the reverse
        self._announced: dict[Hashable, set[int]] = {}
        self._owner: dict[int, Hashable] = {}
        #: client id -> the user whose connection announced its present state (here
        #: or, as its relay said, on another node)
        self._user: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self._states)

    def states(self) -> dict[int, tuple[int, str]]:
        """``{client_id: (clock, state JSON)}`` of every present client (expired ones
        are not, even before :meth:`expire` has removed them)."""
        return {e.client_id: (e.clock, e.state) for e in self._current()}  # type: ignore[misc]

    def announced(self, conn_key: Hashable) -> frozenset[int]:
        """The client ids ``conn_key`` announced and still holds."""
        return frozenset(self._announced.get(conn_key, ()))

    def apply(self, conn_key: Hashable, data: bytes, *, user: str | None = None,
              relayed: bool = False) -> bytes | None:
        """Apply an awareness update from connection ``conn_key`` of ``user``.

        Returns the accepted entries as an update to relay to the others, None when
        nothing was accepted. Malformed bytes are InvalidInput; an entry over a bound
        is PayloadTooLarge; either way nothing of the update is applied. An entry for
        an id whose state is another user's is not accepted. ``relayed``:
        ``conn_key`` is another node, relaying what it accepted from its connections
        (of ``user``), so the bound per connection is not its to meet (the room's is)
        nor whose the state is its to check (it did).
        """
        entries = decode_update(data)
        # decide every entry against a scratch view, then commit all or nothing
        clocks: dict[int, int] = {}
        present: dict[int, bool] = {}
        accepted: list[Entry] = []
        for entry in entries:
            if entry.state is not None and len(entry.state.encode("utf-8")) > \
                    self.max_state_bytes:
                raise PayloadTooLarge("Awareness state", self.max_state_bytes)
            cid = entry.client_id
            if user is not None and not relayed and self._user.get(cid, user) != user:
                continue  # another user's client: a re-send or a takeover, not ours
            clock = clocks.get(cid, self._clock(cid))
            has = present.get(cid, cid in self._states)
            if clock < entry.clock or (clock == entry.clock and entry.state is None and has):
                clocks[cid] = entry.clock
                present[cid] = entry.state is not None
                accepted.append(entry)
        if not accepted:
            return None
        self._check_bounds(conn_key, present, relayed)
        for entry in accepted:
            self._commit(conn_key, entry, user)
        return encode_update(accepted)

    def remove_connection(self, conn_key: Hashable) -> bytes | None:
        """Forget connection ``conn_key``: the update that removes every client id it
        announced (``null`` states), to send the others at once; None if it had none.

        The removal keeps each client's clock, as y-websocket's server does with
        ``removeAwarenessStates``: peers accept a ``null`` at the clock they hold, and
        the client's next renewal (clock + 1) is then accepted again if it reconnects.
        """
        removed = [self._drop(cid) for cid in sorted(self._announced.get(conn_key, ()))]
        return encode_update(removed) if removed else None

    def expire(self) -> bytes | None:
        """Remove every state not renewed within ``timeout`` seconds: the update that
        removes them (``null`` states at their clocks, as :meth:`remove_connection`),
        for this node's members; None if none had expired."""
        cutoff = self._clock_now() - self.timeout
        stale = sorted(cid for cid, at in self._renewed.items() if at <= cutoff)
        removed = [self._drop(cid) for cid in stale]
        return encode_update(removed) if removed else None

    def encode_announced(self, conn_keys: Collection[Hashable]) -> dict[str | None, bytes]:
        """The present states the connections ``conn_keys`` announced, one update per
        user they are of (none if there are none): what a node sends again when
        another node asks, each relayed as that user's."""
        keys = set(conn_keys)
        by_user: dict[str | None, list[Entry]] = {}
        for entry in self._current():
            if self._owner[entry.client_id] in keys:
                by_user.setdefault(self._user.get(entry.client_id), []).append(entry)
        return {user: encode_update(entries) for user, entries in by_user.items()}

    def encode_all(self) -> bytes:
        """Every present state as one update, for a live join's ack: never one that
        has expired, even before :meth:`expire` has removed it."""
        return encode_update(self._current())

    # -- internals ---------------------------------------------------------------

    def _current(self) -> list[Entry]:
        cutoff = self._clock_now() - self.timeout
        return [e for cid, e in self._states.items() if self._renewed[cid] > cutoff]

    def _drop(self, cid: int) -> Entry:
        """Forget present client ``cid`` (owner, state, renewal): its removal entry."""
        owner = self._owner.pop(cid)
        ids = self._announced[owner]
        ids.discard(cid)
        if not ids:
            del self._announced[owner]
        entry = self._states.pop(cid)
        del self._renewed[cid]
        self._user.pop(cid, None)
        self._remember_removed(cid, entry.clock)
        return Entry(cid, entry.clock, None)

    def _clock(self, cid: int) -> int:
        entry = self._states.get(cid)
        if entry is not None:
            return entry.clock
        return self._removed.get(cid, 0)

    def _check_bounds(self, conn_key: Hashable, present: dict[int, bool],
                      relayed: bool) -> None:
        mine = set(self._announced.get(conn_key, ()))
        room = set(self._states)
        for cid, has in present.items():
            if has:
                mine.add(cid)
                room.add(cid)
            else:
                mine.discard(cid)
                room.discard(cid)
        if not relayed and len(mine) > self.max_ids_per_connection:
            raise PayloadTooLarge("Awareness client ids of one connection",
                                  self.max_ids_per_connection)
        if len(room) > self.max_states:
            raise PayloadTooLarge("Awareness states of one room", self.max_states)

    def _commit(self, conn_key: Hashable, entry: Entry, user: str | None) -> None:
        cid = entry.client_id
        owner = self._owner.pop(cid, None)
        if owner is not None:
            ids = self._announced[owner]
            ids.discard(cid)
            if not ids:
                del self._announced[owner]
        if entry.state is None:
            self._states.pop(cid, None)
            self._renewed.pop(cid, None)
            self._user.pop(cid, None)
            self._remember_removed(cid, entry.clock)
            return
        self._removed.pop(cid, None)
        self._states[cid] = entry
        if user is None:
            self._user.pop(cid, None)
        else:
            self._user[cid] = user
        self._renewed[cid] = self._clock_now()
        self._owner[cid] = conn_key
        self._announced.setdefault(conn_key, set()).add(cid)

    def _remember_removed(self, cid: int, clock: int) -> None:
        self._removed[cid] = clock
        self._removed.move_to_end(cid)
        while len(self._removed) > self.max_removed:
            self._removed.popitem(last=False)
