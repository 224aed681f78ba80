"""JSONL transport: events from a file or stdin in polls of N lines; predictions and dead letters out.

Line numbers are 1-based and count every line, blank ones too (blank lines are skipped, not errors).
A dead letter's ``source`` is ``{"file": NAME, "line": N}``.
"""

from __future__ import annotations

import json
from typing import BinaryIO, Iterator, TextIO

from streamer.config import DEFAULT_MAX_MESSAGE_BYTES
from streamer.transports import Poll


class JsonlSource:
    """Reads a binary stream in polls of up to `batch_lines` non-blank lines.

    A line longer than `max_message_bytes` is not held in memory: only its first bytes are kept (enough
    for the engine to refuse it as ``message_too_large``) and the rest is skipped.
    """

    def __init__(self, stream: BinaryIO, name: str, batch_lines: int = 1000,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES):
        if batch_lines < 1:
            raise ValueError(f"batch_lines must be >= 1, got {batch_lines}")
        self._stream = stream
        self.name = name
        self.batch_lines = batch_lines
        self._limit = max_message_bytes + 2  # room for "\r\n"
        self.lines_read = 0

    def polls(self) -> Iterator[Poll]:
        readline = self._stream.readline
        limit = self._limit
        batch = self.batch_lines
        lineno = self.lines_read
        while True:
            messages: list[bytes] = []
            numbers: list[int] = []
            eof = False
            while len(messages) < batch:
                line = readline(limit)
                if not line:
                    eof = True
                    break
                lineno += 1
                if line[-1:] == b"\n":
                    line = line[:-2] if line[-2:] == b"\r\n" else line[:-1]
                elif len(line) == limit:  # over the limit: keep a prefix, skip to the end of the line
                    rest = readline(1 << 16)
                    while rest and rest[-1:] != b"\n":
                        rest = readline(1 << 16)
                if not line.strip():
                    continue
                messages.append(line)
                numbers.append(lineno)
            self.lines_read = lineno
            if messages:
                yield Poll(messages=messages, source=_line_source(self.name, numbers))
            if eof:
                return


def _line_source(name: str, numbers: list[int]):
    def source(i: int) -> dict:
        return {"file": name, "line": numbers[i]}
    return source


class JsonlSink:
    """Writes each poll's output records (and dead letters, when a stream is given) as JSON lines."""

    def __init__(self, output: TextIO, dead_letters: TextIO | None = None, flush: bool = True):
        self._out = output
        self._dlq = dead_letters
        self._flush = flush
        self.records = 0
        self.dead_letters = 0

    def write(self, result) -> None:
        lines = result.outputs.json_lines()
        if lines:
            self._out.write("\n".join(lines))
            self._out.write("\n")
            self.records += len(lines)
            if self._flush:
                self._out.flush()
        if result.dead_letters:
            self.dead_letters += len(result.dead_letters)
            if self._dlq is not None:
                self._dlq.write("".join(json.dumps(d) + "\n" for d in result.dead_letters))
                if self._flush:
                    self._dlq.flush()

    def close(self) -> None:
        for f in (self._out, self._dlq):
            if f is not None:
                f.flush()
