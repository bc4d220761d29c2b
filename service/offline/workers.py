"""A bulk run's scoring processes: forked after the model is loaded, each reads or decodes its
share of the file and scores it; the parent takes the results in file order."""

from __future__ import annotations

import collections
import itertools
import multiprocessing
import multiprocessing.queues
import os
import queue
import signal
import traceback
from collections.abc import Iterator
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

from service.core.features import FEATURES
from service.offline.errors import BulkError
from service.offline.job import Job, Scored
from service.offline.messages import Convert, Converted, Done, Failed, Piece, Walk, Walked
from service.offline.slots import Slots
from service.offline.tables import Engine, Features, as_float64

T = TypeVar("T")


def mapped_artifact(engine: Engine) -> dict[str, int]:
    """This process's view of the memory-mapped serving artifact, from /proc/self/smaps (kB):
    file-backed and shared, with no private copy of its pages. All zero for a model that no file
    maps: one served through sklearn, or converted in memory (its directory read-only)."""
    totals = {"Rss": 0, "Pss": 0, "Private_Dirty": 0, "Anonymous": 0, "mappings": 0}
    nodes = getattr(engine.model.scorer, "arrays", {}).get("nodes")
    path = getattr(nodes, "filename", None)  # only a memory-mapped array (np.memmap) has one
    if path is None:
        return {"pid": os.getpid(), **totals}
    path = str(path)
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 5 and "-" in fields[0] and ":" not in fields[0]:
                inside = fields[-1] == path
                totals["mappings"] += inside
            elif inside and fields[0].rstrip(":") in totals:
                totals[fields[0].rstrip(":")] += int(fields[1])
    return {"pid": os.getpid(), **totals}


def _work(job: Job, k: int, n: int, results: multiprocessing.queues.Queue) -> None:
    """Worker k of n: reads, converts and scores its own pieces, and hands back only what is
    written; last, its view of the mapped artifact."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:
        for batch, last, position in job.source.pieces(k, n):
            results.put(Piece(job.score(batch), last, position))
        results.put(Done(mapped_artifact(job.engine)))
    except BaseException as e:
        results.put(Failed.of(e, traceback.format_exc()))


def _convert_and_walk(
    job: Job,
    k: int,
    shares: list[tuple[str, ...]],
    slots: Slots,
    tasks: multiprocessing.queues.Queue,
    results: multiprocessing.queues.Queue,
) -> None:
    """Worker k of a file decoded by columns: for each chunk the parent names, decodes its share of
    the feature columns and writes them into the chunk's slot (with its bit sets and the reasons
    of its refused values); and walks the chunks the parent gives it once every share is in."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        engine, mine = job.engine, shares[k]
        batches = job.source.chunks(list(mine))
        while (task := tasks.get()) is not None:
            if isinstance(task, Convert):
                chunk, slot = task
                batch = next(batches, None)
                if batch is None:  # the file's end: no rows, for this chunk and any after
                    results.put(Converted(k, chunk, 0, {}))
                    continue
                n = batch.num_rows
                features = Features.read(batch, engine.ood.low, engine.ood.high, slots.rows(slot, n), mine)
                slots.refused(slot, k, n)[:] = features.refused
                slots.outside(slot, k, n)[:] = features.outside
                results.put(Converted(k, chunk, n, features.reasons(batch)))
            else:
                chunk, slot, n, refused = task
                rows = slots.rows(slot, n)
                if refused:  # walk only the rows kept, moved up to the slot's start
                    kept = rows[slots.bits(slot, "refused", n) == 0]
                    rows = slots.rows(slot, len(kept))
                    rows[:] = kept
                slots.probability(slot, len(rows))[:] = engine.model.scorer.predict_rows(rows)
                results.put(Walked(k, chunk, len(rows)))
        results.put(Done(mapped_artifact(engine)))
    except BaseException as e:
        results.put(Failed.of(e, traceback.format_exc()))


class Workers:
    """Scoring processes, forked for each run after the model is loaded (they inherit its
    mapping: the page cache's pages, no copy). Each reads its share of the file itself, or, for a
    Parquet file with fewer row groups than workers (a row group is decoded only from its start),
    each worker decodes a share of the feature columns of every chunk into memory shared with the
    others, and walks its turn of the chunks. The parent takes the results piece by piece in file
    order, and writes. At most two chunks a worker are under way, so memory stays bounded. One
    worker scores in this process."""

    DEPTH = 2  # batches a worker holds: one being scored, one waiting

    def __init__(self, engine: Engine, count: int) -> None:
        self.engine, self.count = engine, count
        self._context = multiprocessing.get_context("fork")
        self._running: list[multiprocessing.Process] = []
        self._mappings: list[dict[str, int]] = []

    def results(self, job: Job) -> Iterator[tuple[Scored, int | None]]:
        """(each batch scored, bytes read up to it when known), in file order."""
        if self.count == 1:
            for batch, _, position in job.source.pieces():
                yield job.score(batch), position
            self._mappings = [mapped_artifact(self.engine)]
        elif job.source.parquet and job.source.row_groups < self.count and not job.explain:
            yield from self._handed(job)
        else:
            yield from self._reading(job)

    def _reading(self, job: Job) -> Iterator[tuple[Scored, int | None]]:
        queues = [self._context.Queue(maxsize=self.DEPTH) for _ in range(self.count)]
        self._start(_work, [(job, k, self.count, queues[k]) for k in range(self.count)])
        try:
            mappings = []
            for turn in itertools.count():
                k = turn % self.count
                message = self._next(queues[k], self._running[k])
                if isinstance(message, Done):  # no piece here, so none after: every other worker is done too
                    mappings.append(message.mapping)
                    for j in range(self.count):
                        if j != k:
                            done = self._expect(Done, self._next(queues[j], self._running[j]), "after the last piece")
                            mappings.append(done.mapping)
                    break
                while True:
                    piece = self._expect(Piece, message, "out of turn")
                    yield piece.scored, piece.position
                    if piece.last:
                        break
                    message = self._next(queues[k], self._running[k])
            self._mappings = mappings
        finally:
            self.close()

    def _handed(self, job: Job) -> Iterator[tuple[Scored, int | None]]:
        """Every worker decodes its share of the feature columns of each chunk into the chunk's
        slot; once all shares are in, the chunk's worker (the workers in turn) walks it. The parent
        decodes only the columns it writes out as they are, and makes the output columns from the
        slot."""
        n, ring = self.count, self.count * self.DEPTH
        slots = Slots(ring, job.source.chunk_rows, n)
        # In FEATURES order, so that a row's reasons, joined share after share, read as one pass's.
        shares = [tuple(str(name) for name in share) for share in np.array_split(np.array(FEATURES), n)]
        tasks = [self._context.Queue() for _ in range(n)]
        results = self._context.Queue()
        self._start(_convert_and_walk, [(job, k, shares, slots, tasks[k], results) for k in range(n)])
        own = job.extras + (list(FEATURES) if job.with_features else [])
        batches = job.source.chunks(own) if own else iter(())
        converted: dict[int, dict[int, tuple[int, dict[int, str]]]] = collections.defaultdict(dict)
        walked: dict[int, int] = {}
        end: int | None = None  # the first chunk past the file's end

        issued = complete = taken = 0

        def convert() -> None:
            """Names the next chunks to convert, in file order (each worker reads its batches in
            turn): while their slots are free (the chunk `ring` before taken), and no more than a
            round ahead of the chunks converted, so that a chunk's walk comes before the next
            round's conversions in its worker's tasks."""
            nonlocal issued
            while issued < min(taken + ring, complete + n):
                for k in range(n):
                    tasks[k].put(Convert(issued, issued % ring))
                issued += 1

        def take(chunk: int) -> Scored:
            parts, slot = converted.pop(chunk), chunk % ring
            rows = parts[0][0]
            reasons = {
                i: "; ".join(parts[k][1][i] for k in range(n) if i in parts[k][1])
                for i in sorted(set().union(*(part[1] for part in parts.values())))
            }
            ok = slots.bits(slot, "refused", rows) == 0 if reasons else slice(None)
            outside = slots.bits(slot, "outside", rows)[ok]
            probability = slots.probability(slot, walked.pop(chunk)).copy()  # the slot is reused next
            batch = next(batches, None)
            if own and (batch is None or batch.num_rows != rows):
                raise RuntimeError("the parent's and the workers' chunks of the file differ")
            columns = [
                pa.array(as_float64(batch.column(name), name).to_numpy(zero_copy_only=False)[ok])
                for name in (FEATURES if job.with_features else ())
            ]
            columns += self.engine.columns(probability, outside)
            return job.counted(rows, [batch.column(name) for name in job.extras], columns, reasons)

        try:
            convert()
            while end is None or taken < end:
                message = self._next(results, *self._running)
                if isinstance(message, Converted):
                    k, chunk, rows, reasons = message
                    converted[chunk][k] = (rows, reasons)
                    if len(converted[chunk]) == n:
                        complete += 1
                        if len({part[0] for part in converted[chunk].values()}) != 1:
                            raise RuntimeError("the workers' chunks of the file differ")
                        if rows == 0:
                            end = chunk if end is None else min(end, chunk)
                        else:
                            refused = any(part[1] for part in converted[chunk].values())
                            tasks[chunk % n].put(Walk(chunk, chunk % ring, rows, refused))
                else:
                    walk = self._expect(Walked, message, "out of turn")
                    walked[walk.chunk] = walk.rows
                while taken in walked:
                    yield take(taken), None
                    taken += 1
                convert()
            for k in range(n):
                tasks[k].put(None)
            self._mappings = []
            while len(self._mappings) < n:
                message = self._next(results, *self._running)
                if isinstance(message, Done):
                    self._mappings.append(message.mapping)
        finally:
            self.close()

    def _start(self, target: Any, args: list[tuple]) -> None:
        # pyarrow imports pandas, when it is installed, the first time it converts anything
        # (about 0.2 s): here, once, before the fork, rather than in every worker of every run.
        pa.array([0.0])
        self._running = [self._context.Process(target=target, args=a, daemon=True) for a in args]
        for process in self._running:
            process.start()

    @staticmethod
    def _next(results: multiprocessing.queues.Queue, *processes: multiprocessing.Process) -> Any:
        """The next message from the processes that answer on results."""
        while True:
            try:
                message = results.get(timeout=1.0)
            except queue.Empty:
                for process in processes:
                    if not process.is_alive():
                        raise BulkError(f"a scoring process stopped (exit code {process.exitcode})") from None
                continue
            if isinstance(message, Failed):
                raise message.error()
            return message

    @staticmethod
    def _expect(kind: type[T], message: Any, when: str) -> T:
        if not isinstance(message, kind):
            raise RuntimeError(f"a scoring process answered {type(message).__name__} {when}")
        return message

    def pids(self) -> list[int]:
        """The scoring processes of the run under way."""
        return [process.pid for process in self._running if process.pid is not None]

    def mappings(self) -> list[dict[str, int]]:
        """Each worker's view of the mapped artifact at the end of the last run."""
        return self._mappings

    def close(self) -> None:
        for process in self._running:
            if process.is_alive():
                process.terminate()
        for process in self._running:
            process.join()
        self._running = []
