"""Each API key's budget of transactions per second, shared by every worker of one gunicorn master.

nginx limits requests (per key and per address, every request costs 1). A request's real cost is
its number of transactions, so the app also counts rows per key, exactly, with the rule nginx's
limit_req applies to requests (GCRA, the leaky bucket with debt):

- a key's *excess* is the rows it has spent beyond what its rate has paid back: it drains at
  RATE_LIMIT_PER_KEY rows per second, never below zero;
- a request of n rows is admitted when the key's excess is at most RATE_LIMIT_BURST; it then adds
  n to the excess. A 1,000-row batch from a key within its burst passes and leaves the key owing
  1,000 rows: nothing more from that key passes until the excess has drained back to the burst;
- refused: 429 with the same JSON body as nginx's and a Retry-After (whole seconds, rounded up)
  after which a request of any size from that key is admitted again, unless others spend first.

So over any interval of t seconds a key is served at most RATE_LIMIT_PER_KEY x t + RATE_LIMIT_BURST
rows plus one request's rows, whatever mix of single scores and batches it sends.

The state is one 64-bit word per key (the instant its debt is paid off, on the monotonic clock) in
an anonymous shared mapping made once in the gunicorn master before fork, so every worker (and
every worker forked after a model rollout) spends from the same budget. service/api/_budget.c updates
it with compare-and-swap: no lock, so a worker killed mid-request cannot stall the others.
Times are integer nanoseconds: a row costs ceil(1e9 / RATE_LIMIT_PER_KEY) ns of debt, exact when
the rate divides 10^9 and never more than a nanosecond a request in the key's favour otherwise."""

from __future__ import annotations

import mmap
import time
from collections.abc import Callable

import falcon

from service.api._budget import SLOT_BYTES
from service.api._budget import spend as _spend
from service.api.errors import ApiError
from service.core.settings import Settings

NS = 1_000_000_000


class RowBudget:
    def __init__(self, keys: int, per_second: int, burst: int, clock: Callable[[], int] = time.monotonic_ns) -> None:
        if keys < 1 or per_second < 1 or burst < 0:
            raise ValueError("a row budget needs at least one key, a positive rate and a burst >= 0")
        # Anonymous and MAP_SHARED (mmap's default): forked workers write to the same pages.
        self._memory = mmap.mmap(-1, keys * SLOT_BYTES)
        self.keys, self.per_second, self.burst = keys, per_second, burst
        self._row_ns = -(-NS // per_second)
        self._tolerance_ns = burst * NS // per_second
        self._clock = clock

    @classmethod
    def for_settings(cls, settings: Settings) -> RowBudget:
        return cls(len(settings.api_keys), settings.rate_limit_per_key, settings.rate_limit_burst)

    def spend(self, key: int, rows: int = 1) -> None:
        """Charges `rows` transactions to API key number `key` (what `require_key` returns), or
        raises the 429 ApiError when that key is over its budget; the refused request costs nothing.

        Every route that scores calls this once per request, after authentication and before the
        work, with the number of transactions it will score (1 for a single score; the number of
        items for a batch, counted before they are validated, so invalid batches cost their size
        too). A route added later does the same: tests/test_rate_budget.py fails for a resource
        that holds a Scoring but no RowBudget."""
        cost = self._row_ns if rows == 1 else -(-rows * NS // self.per_second)
        wait_ns = _spend(self._memory, key, self._clock(), cost, self._tolerance_ns)
        if wait_ns:
            # Another worker may have spent between this clock reading and the spend (this one
            # preempted meanwhile): against its later instant, a stale reading looks like debt. A
            # refusal is decided on a fresh one.
            wait_ns = _spend(self._memory, key, self._clock(), cost, self._tolerance_ns)
        if wait_ns:
            seconds = -(-wait_ns // NS)
            raise ApiError(
                falcon.HTTP_429,
                "rate_limited",
                f"this API key is over its budget of {self.per_second} transactions per second "
                f"(burst {self.burst}); retry after {seconds} s",
                headers={"Retry-After": str(seconds)},
            )
