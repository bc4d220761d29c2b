"""API key check: constant time, several keys for rotation."""

from __future__ import annotations

import hmac


class ApiKeys:
    def __init__(self, keys: tuple[bytes, ...]) -> None:
        if not keys:
            raise ValueError("at least one API key is required")
        self._keys = keys

    def index(self, presented: str | None) -> int | None:
        """The position of the presented key among the configured ones (what the row budget is
        kept by), or None. Compares with every key, without stopping early, so timing tells
        nothing about which key (or how much of one) matched."""
        if not presented:
            return None
        candidate = presented.encode("latin-1", "replace")  # WSGI headers are latin-1 strings
        matched = None
        for i, key in enumerate(self._keys):
            if hmac.compare_digest(candidate, key):
                matched = i
        return matched
