"""In-memory transport for tests, demos and benchmarks (in the spirit of Bytewax's testing.py).

`TestingSource` serves a list of messages in polls; `TestingSink` collects what the engine produced.
A dead letter's ``source`` is ``{"index": i}``, the message's position in the list.
"""

from __future__ import annotations

import json
from typing import Iterator, Sequence

import numpy as np

from streamer.transports import Poll


def encode(message) -> bytes:
    """A message as raw bytes: bytes stay, str is UTF-8 encoded, anything else is JSON-encoded."""
    if isinstance(message, bytes):
        return message
    if isinstance(message, str):
        return message.encode("utf-8", "surrogatepass")
    return json.dumps(message).encode("utf-8")


class TestingSource:
    """Polls of `batch_size` messages (bytes, str, or JSON-able objects) with optional partitions."""

    __test__ = False  # not a pytest class

    def __init__(self, messages: Sequence, batch_size: int = 100, partitions: Sequence[int] | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.messages = [encode(m) for m in messages]
        self.batch_size = batch_size
        self.partitions = None if partitions is None else np.asarray(partitions, np.int64)

    def polls(self) -> Iterator[Poll]:
        for lo in range(0, len(self.messages), self.batch_size):
            hi = lo + self.batch_size
            yield Poll(messages=self.messages[lo:hi], source=lambda i, lo=lo: {"index": lo + i},
                       partitions=None if self.partitions is None else self.partitions[lo:hi])


class TestingSink:
    """Collects output records (dicts), dead letters and the raw poll results."""

    __test__ = False

    def __init__(self, keep_results: bool = False):
        self.records: list[dict] = []
        self.dead_letters: list[dict] = []
        self.results: list = []
        self._keep = keep_results

    def write(self, result) -> None:
        self.records.extend(result.outputs.records())
        self.dead_letters.extend(result.dead_letters)
        if self._keep:
            self.results.append(result)

    def close(self) -> None:
        pass
