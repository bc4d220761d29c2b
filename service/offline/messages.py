"""What a bulk run's parent and its scoring processes say to each other through their queues,
one named type a kind of message, so that each is read by its fields, never by its position.

Workers that read their own pieces answer Piece, ..., Done. Workers that decode shares of the
columns are told Convert and Walk (and None: stop), and answer Converted, Walked, ..., Done.
Any of them may answer Failed instead, and stop."""

from __future__ import annotations

from typing import NamedTuple

from service.offline.errors import BulkError
from service.offline.job import Scored
from service.offline.tables import TableError


class Piece(NamedTuple):
    """A batch the worker read and scored itself."""

    scored: Scored
    last: bool  # whether it ends its piece of the file
    position: int | None  # bytes of the file read up to it, when known


class Convert(NamedTuple):
    """Decode your share of the feature columns of the next chunk into this slot."""

    chunk: int
    slot: int


class Converted(NamedTuple):
    """A worker's share of a chunk is in its slot (rows 0: the file ended before the chunk)."""

    worker: int
    chunk: int
    rows: int
    reasons: dict[int, str]  # the chunk's rows refused for this share's columns -> why


class Walk(NamedTuple):
    """Every share of the chunk is in: walk its rows (only those kept, when some are refused)."""

    chunk: int
    slot: int
    rows: int
    refused: bool


class Walked(NamedTuple):
    """The chunk's probabilities are in its slot, one for each row kept."""

    worker: int
    chunk: int
    rows: int


class Done(NamedTuple):
    """The worker has no more to do; its view of the mapped artifact (see workers.mapped_artifact)."""

    mapping: dict[str, int]


class Failed(NamedTuple):
    """The worker stopped on an error: an expected one's type and line, or a crash's traceback."""

    kind: str
    text: str

    @classmethod
    def of(cls, error: BaseException, traceback: str) -> Failed:
        if isinstance(error, (BulkError, TableError)):
            return cls(type(error).__name__, str(error))
        return cls("crash", traceback)

    def error(self) -> Exception:
        """The exception the parent raises in the worker's stead."""
        if self.kind == BulkError.__name__:
            return BulkError(self.text)
        if self.kind == TableError.__name__:
            return TableError(self.text)
        return RuntimeError(f"a scoring process failed:\n{self.text}")
