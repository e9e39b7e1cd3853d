"""Which Yjs updates would split a surrogate pair, refused so that copies never diverge.

Yjs counts text in UTF-16 units, one clock per unit, so a non-BMP character (an emoji)
takes two clocks: its high and its low surrogate. When an update makes Yjs split a
``ContentString`` item between the two, Yjs turns both halves into U+FFFD
(ContentString.splice, yjs issue 248), while Yrs (pycrdt 0.14) keeps the character
and misplaces what follows, writing state that reads differently again (measured in
tests/test_ydoc.py). No editor puts a cursor inside a character, so only a buggy or
hostile client sends such an update; the server refuses it, and every copy stays
the same.

Yjs splits an item at an id when

* a new item's ``origin`` is that id and it is not the item's last unit (the split
  goes after it): inside a pair when the origin is a **high** unit;
* a new item's ``right_origin`` is that id and it is not the item's first unit (the
  split goes before it): inside a pair when it is a **low** unit;
* a deletion starts or ends inside a live item: inside a pair when it starts at a
  low unit or ends with a high one;
* an item arrives partly known (its first clocks seen already): the known part is cut
  off its string, inside a pair when the cut falls between its own halves.

Both halves of a character are always in one item (splitting between them is what
is refused), so "the unit after a high unit is its low unit" holds everywhere and
the test needs only the ids of the high units of live (not deleted) strings:
:class:`SurrogateIndex` holds them per client, sorted, 8 bytes each, so it is
proportional to the document's non-BMP characters. Deleted text is left out on
purpose: Yrs garbage-collects deleted strings (the state then holds only their
length) and Yjs does the same or, with ``gc: false``, splits the deleted string out
of sight, so an update naming the inside of a deleted character changes no text
anywhere and is accepted. The index is built from a document's whole state and then
follows each accepted change (its strings added, its deletions removed), so it is
the same as an index built afresh from the new state.
"""

from __future__ import annotations

import re
from array import array
from bisect import bisect_left
from collections.abc import Iterator

from .yupdate import Id, Kind, Update

#: the UTF-8 shape of a non-BMP character (a 4-byte sequence): an update or state with
#: no match holds no surrogate pair (other bytes may match too: then it is decoded)
_NON_BMP_UTF8 = re.compile(rb"[\xf0-\xf4][\x80-\xbf]{3}")
_NON_BMP = re.compile("[\U00010000-\U0010ffff]")


def may_hold_pairs(data: bytes) -> bool:
    """False when ``data`` (a Yjs update or state) cannot hold a non-BMP character."""
    return _NON_BMP_UTF8.search(data) is not None


def high_units(text: str) -> list[int]:
    """The UTF-16 offsets of the high surrogates of ``text``'s non-BMP characters."""
    if text.isascii():
        return []
    return [match.start() + n for n, match in enumerate(_NON_BMP.finditer(text))]


class SurrogateIndex:
    """The ids of the high surrogate units in a document's live strings."""

    def __init__(self) -> None:
        self._highs: dict[int, array[int]] = {}

    @classmethod
    def of(cls, state: Update) -> SurrogateIndex:
        """The index of a document whose whole state is ``state``."""
        index = cls()
        index.follow(state)
        return index

    def __len__(self) -> int:
        return sum(len(highs) for highs in self._highs.values())

    def __iter__(self) -> Iterator[Id]:
        """The high units' ids, by client and clock."""
        for client in sorted(self._highs):
            for clock in self._highs[client]:
                yield Id(client, clock)

    def follow(self, change: Update) -> None:
        """Take in what a document just integrated, as the document's own encoder wrote
        it (every struct in it new): its strings' pairs join, its deletions leave."""
        for struct in change.structs:
            if struct.text is not None:
                self._add(struct.client, [struct.clock + at for at in high_units(struct.text)])
        for deleted in change.deletes:
            highs = self._highs.get(deleted.client)
            if highs:
                del highs[bisect_left(highs, deleted.clock):
                          bisect_left(highs, deleted.clock + deleted.length)]
                if not highs:
                    del self._highs[deleted.client]

    def _add(self, client: int, clocks: list[int]) -> None:
        if not clocks:
            return
        highs = self._highs.setdefault(client, array("Q"))
        if not highs or highs[-1] < clocks[0]:  # a client's clocks only grow: the usual case
            highs.extend(clocks)
        else:
            self._highs[client] = array("Q", sorted(set(highs).union(clocks)))

    def is_high(self, client: int, clock: int) -> bool:
        highs = self._highs.get(client)
        if highs is None or clock < 0:
            return False
        at = bisect_left(highs, clock)
        return at < len(highs) and highs[at] == clock

    def refusal(self, update: Update, state_vector: dict[int, int]) -> str | None:
        """Why integrating ``update`` into the document (whose state vector is given)
        would split a surrogate pair, or None when it would not."""
        fresh: dict[int, set[int]] = {}  # the high units this update brings, per client
        items = []
        for struct in update.structs:
            if struct.kind in (Kind.GC, Kind.SKIP):
                continue
            known = state_vector.get(struct.client, 0)
            if struct.clock + struct.length <= known:
                continue  # seen already: Yjs and Yrs skip it whole
            cut = max(0, known - struct.clock)
            if struct.text is not None:
                highs = high_units(struct.text)
                if cut and cut - 1 in highs:
                    return "the update cuts a character in two (a surrogate pair)"
                if highs:
                    fresh.setdefault(struct.client, set()).update(
                        struct.clock + at for at in highs if at >= cut)
            items.append((struct, cut))

        def high(client: int, clock: int) -> bool:
            return self.is_high(client, clock) or clock in fresh.get(client, ())

        for struct, cut in items:
            origin = Id(struct.client, struct.clock + cut - 1) if cut else struct.origin
            if origin is not None and high(origin.client, origin.clock):
                return "the update inserts inside a character (a surrogate pair)"
            right = struct.right_origin
            if right is not None and high(right.client, right.clock - 1):
                return "the update inserts inside a character (a surrogate pair)"
        for deleted in update.deletes:
            if (high(deleted.client, deleted.clock - 1)
                    or high(deleted.client, deleted.clock + deleted.length - 1)):
                return "the update deletes half of a character (a surrogate pair)"
        return None
