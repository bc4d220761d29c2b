"""API key check: constant time, several keys for rotation."""

from __future__ import annotations

import hmac


class ApiKeys:
    def __init__(self, keys: tuple[bytes, ...]) -> None:
        if not keys:
            raise ValueError("at least one API key is required")
        self._keys = keys

    def accepts(self, presented: str | None) -> bool:
        """Compares with every key, without stopping early, so timing tells nothing about which
        key (or how much of one) matched."""
        if not presented:
            return False
        candidate = presented.encode("latin-1", "replace")  # WSGI headers are latin-1 strings
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(candidate, key)
        return matched
