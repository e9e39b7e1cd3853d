"""How deep shared types nest in a document, so that no update can nest them deep
enough to crash the process.

Yrs deletes (and garbage-collects) a shared type recursively, child type by child
type. Measured with pycrdt 0.14.13 on Linux, by bisection in child processes (the
tests keep 30,000 surviving and 60,000 crashing): deleting the root of a chain of
nested types costs about 256 bytes of stack per level, every type alike, so a chain
of ~32,800 (a 200 KB update, or built over many updates) overflows the main thread's
8 MB stack and kills the process with SIGSEGV; on a 1 MB stack the end comes at
~4,000 levels. Encoding, diffs, loading and dropping such a document do not recurse
(they survived 300,000 levels). Editors nest a few dozen levels at most
(ProseMirror: a list item in a list in a list ...), so :data:`MAX_TYPE_DEPTH` is far
above any real document and far below any crash. That margin is the main thread's:
at 256 KB of stack the crash comes at ~1,000 levels, so pycrdt must not be called
from threads with small stacks (musl's default is 128 KB); collab calls it on the
event loop's thread.

The depth of a type is a property of the whole document, not of one update: an
update adds an item *in* a type that earlier updates made. Where an item lives:

* its parent written out as a root type's name: in a root type, depth 0;
* its parent written out as an item id: in the type that item made, one deeper than
  where that item lives;
* an origin or a right origin instead: where the item it names lives (Yjs takes the
  origin's parent, else the right origin's; the deeper of the two is taken here, so a
  hostile update naming two parents cannot pass as shallow). An origin in a garbage
  collected range makes the new item garbage too (Yjs and Yrs do that), so nothing
  nests there and GC ranges count as depth 0.

So :class:`TypeDepths` keeps, per client, its clock ranges and the depth each range's
items live at: adjacent items at one depth share a range, so a document costs a few
ranges per structural edit (a new paragraph, a new list), 12 bytes each. It is built
from a document's decoded state and then extended by each accepted update. Items that
are deleted keep their depth here even after the document garbage-collects them
(erring deep, never shallow).
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from dataclasses import dataclass, field

from .yupdate import Id, Kind, Struct, Update

#: How deep a shared type may be: a root type's child type is at depth 1.
MAX_TYPE_DEPTH = 1000

_UNSEEN = -1
_OPEN = -2  # being placed: a reference back to it is a cycle (Yrs would never integrate it)
_GC, _SKIP, _TYPE = Kind.GC, Kind.SKIP, Kind.TYPE


@dataclass(slots=True)
class DepthRange:
    """Clocks ``clock`` to ``clock + length - 1`` of ``client`` live at ``depth``."""

    client: int
    clock: int
    length: int
    depth: int


@dataclass(slots=True)
class Placement:
    """Where an update's new items would live: what :meth:`TypeDepths.follow` takes
    in once the update is accepted."""

    #: per client in clock order, adjacent ranges at one depth merged
    ranges: list[DepthRange] = field(default_factory=list)
    #: the depth of the deepest type the update makes (0: it makes none)
    deepest: int = 0


class TypeDepths:
    """The depth every item of a document lives at, by id."""

    def __init__(self, *, unknown_depth: int = 0) -> None:
        """``unknown_depth``: the depth assumed for items this index does not hold. 0
        when it holds the whole document (an update naming others is pending, and
        refused); :data:`MAX_TYPE_DEPTH` when the state could not be read, so that no
        type can hang below what is not known."""
        self.unknown_depth = unknown_depth
        self._starts: dict[int, array[int]] = {}
        self._depths: dict[int, array[int]] = {}
        #: per client, the clock after its last item here (its state vector entry)
        self._ends: dict[int, int] = {}
        #: the depth of the deepest type in the document
        self.deepest = 0

    @classmethod
    def of(cls, state: Update) -> TypeDepths:
        """The depths of a document whose whole state is ``state``."""
        depths = cls()
        depths.follow(depths.place(state))
        return depths

    def __len__(self) -> int:
        """How many ranges are held (memory is about 12 bytes each)."""
        return sum(len(starts) for starts in self._starts.values())

    def depth_at(self, client: int, clock: int) -> int | None:
        """The depth the item holding id ``(client, clock)`` lives at; None if unknown."""
        if not 0 <= clock < self._ends.get(client, 0):
            return None
        return self._depths[client][bisect_right(self._starts[client], clock) - 1]

    def place(self, update: Update) -> Placement:
        """Where the items of ``update`` that this document lacks would live, in clock
        order per client. Touches nothing. A reference to an item neither here nor in
        the update counts as :attr:`unknown_depth`.

        Items of one update may name each other in any order (and, hostile, in a
        cycle), so they are placed depth-first with an explicit stack, never recursion.
        (Written for speed: a loaded document's first edit places its whole state.)
        """
        structs = update.structs
        depth = [_UNSEEN] * len(structs)
        local = _LocalIds(structs)
        local_clocks, local_ats = local.clocks, local.ats
        ends, starts_of, depths_of = self._ends, self._starts, self._depths
        unknown = self.unknown_depth

        def where(ref: Id) -> int:
            """The depth ``ref``'s item lives at (>= 0), or ``~at`` for the update's
            struct ``at`` that holds it when that one is still to be placed."""
            client, clock = ref.client, ref.clock
            if clock < ends.get(client, 0):
                return depths_of[client][bisect_right(starts_of[client], clock) - 1]
            clocks = local_clocks.get(client)
            if clocks is None:
                return unknown
            found = bisect_right(clocks, clock) - 1
            if found < 0:
                return unknown
            at = local_ats[client][found]
            holder = structs[at]
            if clock >= holder.clock + holder.length:
                return unknown
            placed = depth[at]
            if placed >= 0:
                return placed
            return 0 if placed == _OPEN else ~at

        for start, struct in enumerate(structs):
            if depth[start] != _UNSEEN or struct.kind is _SKIP:
                continue
            stack = [start]
            while stack:
                at = stack[-1]
                if depth[at] >= 0:
                    stack.pop()
                    continue
                struct = structs[at]
                parent = struct.parent
                first: list[int] = []
                if parent is None:
                    result = 0
                    if struct.kind is not _GC:
                        for ref in (struct.origin, struct.right_origin):
                            if ref is not None:
                                found = where(ref)
                                if found < 0:
                                    first.append(~found)
                                elif found > result:
                                    result = found
                elif parent.__class__ is bytes:
                    result = 0
                else:
                    found = where(parent)  # type: ignore[arg-type]
                    if found < 0:
                        first.append(~found)
                    result = found + 1
                if first:  # place what it names first; a name back to it then reads 0
                    depth[at] = _OPEN
                    stack.extend(first)
                else:
                    depth[at] = result
                    stack.pop()

        placement = Placement()
        ranges = placement.ranges
        deepest = 0
        for client, ats in local_ats.items():
            end = ends.get(client, 0)
            last: DepthRange | None = None
            for at in ats:
                struct = structs[at]
                clock, length = struct.clock, struct.length
                if clock + length <= end:
                    continue  # the document has it already (or the update twice)
                if clock < end:
                    clock, length = end, clock + length - end
                level = depth[at]
                if struct.kind is _TYPE and level + 1 > deepest:
                    deepest = level + 1
                if last is not None and last.depth == level and last.clock + last.length == clock:
                    last.length += length
                else:
                    last = DepthRange(client, clock, length, level)
                    ranges.append(last)
                end = clock + length
        placement.deepest = deepest
        return placement

    def follow(self, placement: Placement) -> None:
        """Take in the items of an update the document just accepted (as placed)."""
        for new in placement.ranges:
            end = self._ends.get(new.client, 0)
            if new.clock + new.length <= end:
                continue
            starts = self._starts.get(new.client)
            if starts is None:
                starts = self._starts[new.client] = array("Q")
                depths = self._depths[new.client] = array("I")
            else:
                depths = self._depths[new.client]
            if not depths or depths[-1] != new.depth:
                starts.append(max(new.clock, end))
                depths.append(new.depth)
            self._ends[new.client] = new.clock + new.length
        self.deepest = max(self.deepest, placement.deepest)


class _LocalIds:
    """The structs of one update by id (but skips), per client in clock order: their
    clocks and their indexes in the update."""

    def __init__(self, structs: list[Struct]) -> None:
        self.clocks: dict[int, list[int]] = {}
        self.ats: dict[int, list[int]] = {}
        ordered = True
        last_client, last_clock = None, -1
        for at, struct in enumerate(structs):
            if struct.kind is _SKIP:
                continue
            client = struct.client
            clocks = self.clocks.get(client)
            if clocks is None:
                clocks = self.clocks[client] = []
                self.ats[client] = []
            elif client != last_client or struct.clock < last_clock:
                ordered = False  # a client written twice: hostile, but readable
            clocks.append(struct.clock)
            self.ats[client].append(at)
            last_client, last_clock = client, struct.clock
        if not ordered:
            for client, clocks in self.clocks.items():
                pairs = sorted(zip(clocks, self.ats[client], strict=True))
                self.clocks[client] = [clock for clock, _ in pairs]
                self.ats[client] = [at for _, at in pairs]


__all__ = ["MAX_TYPE_DEPTH", "DepthRange", "Placement", "TypeDepths"]
