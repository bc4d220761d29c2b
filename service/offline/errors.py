"""What stops a bulk run: one line, for the command line to print."""

from __future__ import annotations


class BulkError(Exception):
    """The run cannot go on (unreadable input, missing columns, unwritable output): one line."""


def reason(e: BaseException) -> str:
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return " ".join(text.split())[:300]
