"""One marshmallow schema per client-to-server payload.

Validation failures become ``INVALID_INPUT`` with marshmallow's per-field
messages as ``details``. Unknown fields are refused, so a typo in a field
name is reported instead of silently ignored.
"""

from __future__ import annotations

from marshmallow import RAISE, Schema, fields, validate

from .text import is_text

#: \A and \Z: ``$`` would also match before a trailing newline ("report\n")
ID_PATTERN = r"\A[A-Za-z0-9_.:-]{1,128}\Z"
ID_MESSAGE = "Must be 1 to 128 characters from A-Z a-z 0-9 _ . : -"


class Text(fields.String):
    """A string that is Unicode text: every text field of the protocol is one.

    JSON can spell a lone surrogate (``"\\ud800"``) and Python decodes it into
    a ``str``, but it is no character: UTF-8, SQLite and BSON all refuse to
    encode it, so it is refused here, before anything is stored or sent.
    """

    default_error_messages = {"surrogate": "Not valid Unicode text (a lone surrogate)."}

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        if not is_text(text):
            raise self.make_error("surrogate")
        return text


def Id(**kwargs) -> fields.String:  # noqa: N802 - reads like a field class
    """A resource id as the protocol defines it."""
    return Text(validate=validate.Regexp(ID_PATTERN, error=ID_MESSAGE), **kwargs)


def UserId(**kwargs) -> fields.String:  # noqa: N802
    """A user id: whatever a token's ``sub`` may hold, within reason."""
    return Text(validate=validate.Length(min=1, max=256), **kwargs)


def Title() -> fields.String:  # noqa: N802
    return Text(load_default="", validate=validate.Length(max=1000))


class StrictBoolean(fields.Boolean):
    """Only JSON ``true`` and ``false``; no ``"yes"`` or ``1``."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


#: the integers both stores hold (SQLite INTEGER, BSON int64)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class StrictInteger(fields.Integer):
    """A JSON integer that fits in 64 bits; ``true``, ``1.5`` and ``"1"`` are refused.

    A larger one is no seq, version or page size the server can have, and
    would reach the store only to fail there as an overflow.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(strict=True, **kwargs)
        self.validators.append(validate.Range(
            min=INT64_MIN, max=INT64_MAX, error="Must fit in 64 bits ({min} to {max})."))

    def _validated(self, value):
        if isinstance(value, bool):
            raise self.make_error("invalid")
        return super()._validated(value)


class Binary(fields.Field):
    """Bytes that came as a Socket.IO binary attachment (``Uint8Array`` in JavaScript,
    ``bytes`` in Python): a Yjs update, state vector or awareness update."""

    default_error_messages = {"invalid": "Must be binary (a Socket.IO attachment)."}

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bytearray | memoryview):
            value = bytes(value)
        if not isinstance(value, bytes):
            raise self.make_error("invalid")
        return value


class Payload(Schema):
    class Meta:
        unknown = RAISE


class DocumentCreate(Payload):
    document_id = Id()
    title = Title()
    content = Text(load_default="")


class DocumentShare(Payload):
    document_id = Id(required=True)
    user_id = UserId(required=True)
    role = Text(
        required=True, allow_none=True, validate=validate.OneOf(["editor", "viewer"])
    )


class DocumentRef(Payload):
    document_id = Id(required=True)


class DocumentJoin(Payload):
    document_id = Id(required=True)
    #: present (even empty): a live member, synced by Yjs state vectors
    state_vector = Binary()


class DocumentYUpdate(Payload):
    document_id = Id(required=True)
    update = Binary(required=True)


class DocumentAwareness(Payload):
    document_id = Id(required=True)
    update = Binary(required=True)


class DocumentHistory(Payload):
    document_id = Id(required=True)
    before_version = StrictInteger(validate=validate.Range(min=1))
    limit = StrictInteger(validate=validate.Range(min=1))


class DocumentGet(Payload):
    document_id = Id(required=True)
    version = StrictInteger(validate=validate.Range(min=0))


class DocumentRestore(Payload):
    document_id = Id(required=True)
    version = StrictInteger(required=True, validate=validate.Range(min=0))


class DocumentUpdate(Payload):
    document_id = Id(required=True)
    content = Text(required=True)
    version = StrictInteger(required=True, validate=validate.Range(min=1))


class ChatCreate(Payload):
    chat_id = Id()
    title = Title()
    members = fields.List(UserId(), load_default=list, validate=validate.Length(max=1000))


class ChatInvite(Payload):
    chat_id = Id(required=True)
    user_id = UserId(required=True)


class ChatJoin(Payload):
    chat_id = Id(required=True)
    since_seq = StrictInteger(validate=validate.Range(min=0))


class ChatRef(Payload):
    chat_id = Id(required=True)


class ChatMessage(Payload):
    chat_id = Id(required=True)
    content = Text(required=True, validate=validate.Length(min=1))
    client_id = Id()


class ChatHistory(Payload):
    chat_id = Id(required=True)
    before_seq = StrictInteger(validate=validate.Range(min=1))
    limit = StrictInteger(validate=validate.Range(min=1))


class ChatTyping(Payload):
    chat_id = Id(required=True)
    typing = StrictBoolean(required=True)


class ListPage(Payload):
    """``documents:list`` / ``chat:list``: a page of what the user holds a role on."""

    #: the ``next`` of the page before (opaque; the store checks it)
    before = Text(validate=validate.Length(min=1, max=1024))
    limit = StrictInteger(validate=validate.Range(min=1))


class AuthRefresh(Payload):
    token = Text(required=True, validate=validate.Length(min=1))
