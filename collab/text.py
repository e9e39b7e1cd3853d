"""What counts as text: a ``str`` that UTF-8 can encode.

JSON can spell a lone surrogate (``"\\ud800"``) and Python decodes it into a
``str``, but it is no character: UTF-8, SQLite, BSON and every socket refuse
it. Payload fields, token claims and outgoing packets all ask this one question.
"""

from __future__ import annotations


def is_text(value: str) -> bool:
    """Whether ``value`` holds no lone surrogate (ASCII is checked in O(1))."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
