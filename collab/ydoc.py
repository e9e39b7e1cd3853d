"""One loaded live document: a pycrdt (Yrs) ``Doc`` whose ``Y.Text`` ``content`` is
the v1 ``content`` string (PROTOCOL "Live documents: Yjs (v2)").

Everything here is synchronous and bounded, so a handler calls it between awaits:

* :meth:`LiveDocument.apply` takes a client's Yjs update (format v1) and returns
  the update to store and relay, or ``None`` when it brought nothing new;
* :meth:`LiveDocument.replace_content` is the v1 bridge: a whole-string
  replacement applied as the smallest edit;
* :meth:`LiveDocument.diff` / :meth:`LiveDocument.state_vector` answer sync steps,
  :meth:`LiveDocument.snapshot` compacts.

Hostile input. Yrs decodes an update whole before integrating it, but an update that
decodes can still fail half way through integration and leave part of itself in the
document (measured: "block parent ... must be deleted or shared ref type"), and Rust
panics surface as ``pyo3_runtime.PanicException``, a ``BaseException`` that ``except
Exception`` lets through. So every refused change is rolled back by rebuilding the
``Doc`` from a baseline snapshot plus the updates accepted since (kept here, compacted
as they grow), and a refusal is always :class:`~collab.errors.InvalidInput` or
:class:`~collab.errors.PayloadTooLarge` with the document as it was.

Every update is first read by :mod:`collab.yupdate`, strictly and the way Yjs reads
it, before pycrdt sees its bytes: Yrs reads nested values recursively, and an update
nesting them deep enough kills the process (measured, see ``MAX_ANY_DEPTH``). Yrs also
deletes nested shared types recursively, so an update that would nest a type deeper
than :data:`~collab.typedepth.MAX_TYPE_DEPTH` in the document (counting what earlier
updates made) is refused before it is applied (see :mod:`collab.typedepth`). An update
that would split a surrogate pair (see :mod:`collab.surrogates`) is refused before it
is applied: Yjs and Yrs disagree about such an update, and the copies would differ.

An update whose dependencies the document lacks (a clock gap, an origin it has never
seen, a deletion of unknown items) is refused too: Yrs would keep it "pending" in
memory, invisible to :meth:`snapshot` and to the state limit, and store it nowhere.
Clients that follow the sync protocol never send one.

Indexing (pycrdt 0.14 / Yrs 0.28, measured in tests/test_ydoc.py): ``Text.__len__``,
``insert`` and ``del text[a:b]`` count UTF-8 bytes; ``str(text)`` and its slices are
code points; an ``insert`` past the end or inside a character appends at the end
instead of failing, and a ``del`` inside a character panics. Yjs in the browser counts
UTF-16 units. So this module converts code-point positions to UTF-8 offsets itself and
never hands pycrdt an offset inside a character.

Threads: a ``LiveDocument`` is not thread-safe. Call it from one thread (the event
loop); nothing in it awaits, so each call is atomic with respect to the others there.
pycrdt's ``allow_multithreading`` only serialises transactions, which a single caller
does not need.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable
from typing import Any

import pycrdt

from .errors import InvalidInput, PayloadTooLarge
from .lib0 import Lib0Error, Reader, read_state_vector
from .surrogates import SurrogateIndex, may_hold_pairs
from .text import is_text
from .typedepth import MAX_TYPE_DEPTH, Placement, TypeDepths
from .yupdate import Update, decode_update

log = logging.getLogger(__name__)

#: the name of the ``Y.Text`` that holds the v1 ``content`` string
CONTENT = "content"

#: defaults of the two limits (the v1 content limit, ``max_document_state_bytes``)
MAX_CONTENT_BYTES = 512 * 1024
MAX_STATE_BYTES = 8 * 1024 * 1024

#: How many bytes of encoded state one byte of update can add, at most. Integrating
#: an update can split existing items, and each split costs a struct header (with the
#: item's client id, up to 8 bytes as a varuint) in the state. Measured worst case:
#: deleting every other character of text written by a client with a 53-bit id adds
#: 10.4 state bytes per update byte (tests/test_ydoc.py). Until the running bound
#: crosses ``max_state_bytes`` no update pays for measuring the exact size.
STATE_GROWTH_PER_UPDATE_BYTE = 32

#: the update log kept for rollback is folded into a new baseline once it outgrows
#: both this and the baseline itself, so rollback state stays within ~2x the state
_MIN_LOG_BYTES = 64 * 1024

_EMPTY_STATE_VECTOR = b"\x00"


def _is_panic(exc: BaseException) -> bool:
    """pyo3's PanicException lives in the ``pyo3_runtime`` module, which is no import."""
    return type(exc).__name__ == "PanicException"


class _Refused(Exception):
    """Internal: roll back, then raise ``error``."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class LiveDocument:
    """A Yjs document held in memory while its room has live members.

    Build one with :meth:`load` (stored state) or :meth:`new` (a new document).
    The limits apply to changes; a stored document already over them still loads.
    """

    def __init__(self, baseline: bytes | None, updates: Iterable[bytes] = (), *,
                 max_content_bytes: int = MAX_CONTENT_BYTES,
                 max_state_bytes: int = MAX_STATE_BYTES, client_id: int | None = None) -> None:
        """Prefer :meth:`load` and :meth:`new`. Raises ``ValueError`` for stored bytes
        that do not decode: corrupt storage is no client's input error."""
        self.max_content_bytes = max_content_bytes
        self.max_state_bytes = max_state_bytes
        self._captured: list[bytes] = []
        self._client_id = client_id
        #: the document's surrogate pairs, built from its state when first needed
        self._surrogates: SurrogateIndex | None = None
        #: the depth of every item, built from its state when first needed
        self._depths: TypeDepths | None = None
        stored = [u for u in ([baseline] if baseline else []) + list(updates)]
        if client_id is None:
            # this copy's own (v1 bridge) edits need an id the document has never seen:
            # two writers under one client id corrupt a Yjs document
            while True:
                self._client_id = random.getrandbits(32)
                doc = self._build(stored)
                if self._client_id not in read_state_vector(doc.get_state()):
                    break
        else:
            doc = self._build(stored)
        self._install(doc)
        self._rebase()

    @classmethod
    def load(cls, snapshot: bytes | None, updates: Iterable[bytes] = (), **limits: Any,
             ) -> LiveDocument:
        """The document stored as ``snapshot`` (a full-state update, or None) followed by
        the ``updates`` accepted after it, in order."""
        return cls(snapshot, updates, **limits)

    @classmethod
    def new(cls, content: str = "", **limits: Any) -> LiveDocument:
        """A new document holding ``content``; :meth:`snapshot` is then its creation."""
        document = cls(None, **limits)
        if content:
            document.replace_content(content)
        return document

    # -- reading ---------------------------------------------------------------

    @property
    def content(self) -> str:
        """The v1 ``content``: the ``Y.Text`` named ``content`` as a string."""
        return str(self._text)

    @property
    def content_bytes(self) -> int:
        """UTF-8 length of :attr:`content`, in O(1) (Yrs counts text in UTF-8 bytes)."""
        return len(self._text)

    @property
    def client_id(self) -> int:
        """The Yjs client id this copy's own edits (the v1 bridge) are made under."""
        assert self._client_id is not None
        return self._client_id

    def state_vector(self) -> bytes:
        """The Yjs state vector, for sync step 1 (what this copy has)."""
        return self._doc.get_state()

    def diff(self, state_vector: bytes) -> bytes:
        """Sync step 2: everything a peer with ``state_vector`` lacks (an empty vector,
        ``b""`` or ``b"\\x00"``, gets everything). Undecodable input is InvalidInput."""
        if not isinstance(state_vector, (bytes, bytearray, memoryview)):
            raise InvalidInput("state_vector must be bytes")
        state_vector = bytes(state_vector) or _EMPTY_STATE_VECTOR
        try:
            # pycrdt never sees malformed bytes: its decoders have panicked on some
            read_state_vector(state_vector)
        except Lib0Error as exc:
            raise InvalidInput(f"state_vector cannot be decoded: {exc}") from None
        try:
            return self._doc.get_update(state_vector)
        except BaseException as exc:  # noqa: B036 - PanicException is a BaseException
            if not (isinstance(exc, Exception) or _is_panic(exc)):
                raise
            raise InvalidInput("state_vector cannot be decoded") from None

    def snapshot(self) -> bytes:
        """The whole state as one update: what compaction stores, what a new peer loads."""
        return self._doc.get_update()

    @property
    def state_size(self) -> int:
        """Bytes of :meth:`snapshot`, exact; costs an encode, O(state)."""
        return len(self._doc.get_update())

    # -- changing --------------------------------------------------------------

    def apply(self, update: bytes) -> bytes | None:
        """Apply a client's Yjs update (format v1).

        Returns the update to store and relay (what the document did not have before,
        as Yrs encodes it), or None when it brought nothing new: then nothing is to
        be stored or broadcast. Refusals change nothing: ``InvalidInput`` for bytes
        that do not decode or integrate, or that depend on changes this document
        lacks; ``PayloadTooLarge`` when ``content`` would exceed
        ``max_content_bytes``, the state ``max_state_bytes``, or a shared type would
        nest deeper than :data:`~collab.typedepth.MAX_TYPE_DEPTH`.
        """
        if not isinstance(update, (bytes, bytearray, memoryview)):
            raise InvalidInput("update must be bytes")
        update = bytes(update)
        try:
            # before pycrdt sees the bytes (deep nesting crashes Yrs); touches nothing
            decoded = decode_update(update)
        except Lib0Error as exc:
            raise InvalidInput(f"update cannot be decoded: {exc}") from None
        try:
            pycrdt.get_state(update)  # what Yrs would not decode costs no rollback either
        except BaseException as exc:  # noqa: B036 - PanicException is a BaseException
            if not (isinstance(exc, Exception) or _is_panic(exc)):
                raise
            raise InvalidInput("update cannot be decoded") from None
        placement = self._placement(decoded)
        surrogates = self._surrogate_index()
        if len(surrogates) or may_hold_pairs(update):
            refusal = surrogates.refusal(decoded, read_state_vector(self._doc.get_state()))
            if refusal is not None:
                raise InvalidInput(f"{refusal}; Yjs and Yrs would disagree about it")
        return self._follow(self._change(lambda doc: doc.apply_update(update), update),
                            placement)

    def replace_content(self, new: str) -> bytes | None:
        """The v1 bridge: make ``content`` equal ``new`` by the smallest edit (common
        prefix and suffix kept, counted in code points), so live editors' cursors and
        concurrent edits survive. Returns the resulting Yjs update, None when the text
        is unchanged. Same refusals as :meth:`apply`."""
        if not isinstance(new, str) or not is_text(new):
            raise InvalidInput("content must be text")
        new_bytes = len(new.encode("utf-8"))
        # a document loaded over a lowered limit may still shrink
        if new_bytes > self.max_content_bytes and new_bytes > self.content_bytes:
            raise PayloadTooLarge("Document content", self.max_content_bytes)
        old = self.content
        if new == old:
            return None
        self._placement(None)  # (a deletion may take a type embedded in the text)
        start, old_end, new_end = _edit_span(old, new)
        # pycrdt offsets are UTF-8 bytes; these are at character boundaries by construction
        byte_start = len(old[:start].encode("utf-8"))
        byte_end = byte_start + len(old[start:old_end].encode("utf-8"))
        inserted = new[start:new_end]

        def edit(doc: pycrdt.Doc) -> None:
            text = self._text
            with doc.transaction():
                if byte_end > byte_start:
                    del text[byte_start:byte_end]
                if inserted:
                    text.insert(byte_start, inserted)

        return self._follow(self._change(edit))

    # -- internals ---------------------------------------------------------------

    def _change(self, change: Any, update: bytes | None = None) -> bytes | None:
        """Run ``change`` on the document and keep it if every check passes; otherwise
        rebuild the document as it was and raise the refusal.

        Checking after the fact and rolling back only on refusal means an accepted
        change pays for no trial copy: the content check is O(1) and the exact state
        size is measured only once the running bound crosses the limit.
        """
        content_before = self.content_bytes
        self._captured.clear()
        try:
            try:
                change(self._doc)
            except BaseException as exc:  # noqa: B036 - PanicException is a BaseException
                if not (isinstance(exc, Exception) or _is_panic(exc)):
                    raise
                raise _Refused(InvalidInput("update cannot be applied")) from None
            if update is not None and self._left_pending(update):
                raise _Refused(InvalidInput(
                    "update depends on changes this document does not have; sync first"))
            if not self._captured:
                return None
            produced = (self._captured[0] if len(self._captured) == 1
                        else pycrdt.merge_updates(*self._captured))
            content = self.content_bytes
            # a document loaded over a lowered limit may still shrink
            if content > self.max_content_bytes and content > content_before:
                raise _Refused(PayloadTooLarge("Document content", self.max_content_bytes))
            bound = self._state_bound + STATE_GROWTH_PER_UPDATE_BYTE * len(produced)
            if bound > self.max_state_bytes:
                state = self._doc.get_update()
                if len(state) > self.max_state_bytes and len(state) > self._state_measured:
                    raise _Refused(PayloadTooLarge("Document state", self.max_state_bytes))
                self._rebase(state)  # the baseline now includes ``produced``
                return produced
        except _Refused as refused:
            self._install(self._build([self._base, *self._log]))
            raise refused.error from None
        finally:
            self._captured.clear()
        self._state_bound = bound
        self._log.append(produced)
        self._log_bytes += len(produced)
        if self._log_bytes > max(_MIN_LOG_BYTES, len(self._base)):
            self._rebase()
        return produced

    def _surrogate_index(self, decoded: Update | None = None) -> SurrogateIndex:
        """(``decoded``: the state, when the caller has decoded it already.)"""
        if self._surrogates is None:
            state = self._doc.get_update()
            try:
                self._surrogates = (
                    SurrogateIndex.of(decoded or decode_update(state))
                    if may_hold_pairs(state) else SurrogateIndex())
            except Lib0Error as exc:
                # stored before updates were read the way Yjs reads them: no Yjs client
                # can load this state at all, so none can disagree with it either
                log.warning("document state is not one Yjs can read (%s): surrogate pairs "
                            "already in it are not protected", exc)
                self._surrogates = SurrogateIndex()
        return self._surrogates

    def _type_depths(self) -> TypeDepths:
        if self._depths is None:
            try:
                state = decode_update(self._doc.get_update())
            except Lib0Error as exc:
                # (see _surrogate_index) where items of this state live is not known:
                # nothing may nest below them
                log.warning("document state is not one Yjs can read (%s): no shared type "
                            "may nest in what is already in it", exc)
                self._depths = TypeDepths(unknown_depth=MAX_TYPE_DEPTH)
            else:
                self._depths = TypeDepths.of(state)
                self._surrogate_index(state)  # built from the same decoding, if it is due
        return self._depths

    def _placement(self, update: Update | None) -> Placement:
        """Where ``update``'s items would live (None: no items, for the v1 bridge); a
        refusal if a type would nest too deep, or if the document already does (stored
        before the limit: deleting such a type would crash the process, so it takes no
        change at all)."""
        depths = self._type_depths()
        placement = Placement() if update is None else depths.place(update)
        if placement.deepest > MAX_TYPE_DEPTH or depths.deepest > MAX_TYPE_DEPTH:
            raise PayloadTooLarge("Shared type nesting", MAX_TYPE_DEPTH)
        return placement

    def _follow(self, produced: bytes | None, placement: Placement | None = None,
                ) -> bytes | None:
        """Keep the indexes in step with an accepted change: ``placement`` is where its
        items live (None: find out from ``produced``)."""
        if produced is None:
            return None
        if self._depths is not None:
            if placement is None:
                try:
                    placement = self._depths.place(decode_update(produced))
                except Lib0Error:  # (Yrs wrote it: cannot happen) rebuild from the state
                    self._depths = None
            if placement is not None and self._depths is not None:
                self._depths.follow(placement)
        if self._surrogates is not None:
            if len(self._surrogates) or may_hold_pairs(produced):
                try:
                    self._surrogates.follow(decode_update(produced))
                except Lib0Error:  # (Yrs wrote it: cannot happen) rebuild from the state
                    self._surrogates = None
        return produced

    def _left_pending(self, update: bytes) -> bool:
        """Whether Yrs parked part of ``update`` as pending instead of integrating it.

        What of ``update`` is still missing against the state vector after applying it
        is the part that was not integrated: any struct there, or a deletion of items
        beyond the state vector, is pending.
        """
        try:
            state_vector = self._doc.get_state()
            vector = read_state_vector(state_vector)
            missing = pycrdt.get_update(update, state_vector)
            reader = Reader(missing)
            if reader.var_uint() != 0:  # structs of some client were not integrated
                return True
            for _ in range(reader.var_uint()):  # the delete set: client, ranges
                client = reader.var_uint()
                for _ in range(reader.var_uint()):
                    clock = reader.var_uint()
                    length = reader.var_uint()
                    if clock + length > vector.get(client, 0):
                        return True
            return False
        except BaseException as exc:  # noqa: B036 - PanicException is a BaseException
            if not (isinstance(exc, Exception) or _is_panic(exc)):
                raise
            return True  # cannot tell: refuse rather than keep something unstorable

    def _build(self, updates: list[bytes]) -> pycrdt.Doc:
        doc = pycrdt.Doc(client_id=self._client_id)
        doc.get(CONTENT, type=pycrdt.Text)
        try:
            for update in updates:
                if update:
                    doc.apply_update(update)
        except BaseException as exc:  # noqa: B036 - PanicException is a BaseException
            if not (isinstance(exc, Exception) or _is_panic(exc)):
                raise
            raise ValueError(f"stored document state cannot be loaded: {exc}") from None
        return doc

    def _install(self, doc: pycrdt.Doc) -> None:
        self._doc = doc
        self._text = doc.get(CONTENT, type=pycrdt.Text)
        doc.observe(lambda event: self._captured.append(event.update))

    def _rebase(self, state: bytes | None = None) -> None:
        """Fold the rollback log into a new baseline; the state size is exact again."""
        self._base = self._doc.get_update() if state is None else state
        self._log = []
        self._log_bytes = 0
        self._state_bound = self._state_measured = len(self._base)


def _edit_span(old: str, new: str) -> tuple[int, int, int]:
    """``(start, old_end, new_end)``: ``old[start:old_end]`` becomes ``new[start:new_end]``
    with the longest common prefix and then the longest common suffix kept."""
    limit = min(len(old), len(new))
    start = _common_prefix(old, new, limit)
    suffix = _common_prefix(old[::-1], new[::-1], limit - start)
    return start, len(old) - suffix, len(new) - suffix


def _common_prefix(a: str, b: str, limit: int) -> int:
    """Length of the common prefix of ``a`` and ``b``, at most ``limit``: a binary search
    over slice comparisons, which run in C."""
    low, high = 0, limit
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low
