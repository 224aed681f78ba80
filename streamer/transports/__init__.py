"""Transports feed the engine polls of raw messages and take its results.

A source yields `Poll`s; a sink gets each poll's `PollResult` (see `streamer.engine`). The JSONL
transport (`jsonl`), the in-memory testing transport (`testing`) and the Kafka transport all speak this.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np


@dataclass
class Poll:
    """One batch of raw messages, in arrival order.

    `source(i)` describes where message i came from, for its dead letter: ``{"file": ..., "line": n}``
    for JSONL, ``{"topic": ..., "partition": p, "offset": o}`` for Kafka. `partitions` (per message, or
    None) tags each stream's state with its partition. `received` is the `time.perf_counter()` at which
    the poll arrived (the start of each event's latency). `keys` (per message, or None for a transport
    without keys) are the messages' keys: each must be its event's stream_id (`streamer.routing`).
    """

    messages: Sequence[bytes | str]
    source: Callable[[int], Any]
    partitions: np.ndarray | None = None
    received: float = field(default_factory=time.perf_counter)
    keys: Sequence[bytes | None] | None = None

    def __len__(self) -> int:
        return len(self.messages)


class Source(Protocol):
    def polls(self) -> Iterator[Poll]: ...


class Sink(Protocol):
    def write(self, result) -> None: ...

    def close(self) -> None: ...
