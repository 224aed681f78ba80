"""Hostile input for the Kafka tests: a corpus of bad messages (each with the dead-letter code it must get,
or None where any code will do), raw producers (kafka-python and kcat, as a user would), and checks.

Nothing here imports TensorFlow."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from streamer import schema

F = 3
MAX_MESSAGE_BYTES = 1_100_000  # serve's --max-message-bytes in the hostile suite
INPUT_TOPIC_BYTES = 3_000_000  # the input topic takes messages beyond serve's limit
DLQ_TOPIC_BYTES = 100_000  # small topic limits, so that "too large" needs only ~100 KB messages
OUTPUT_TOPIC_BYTES = 300_000


def need_kcat() -> str:
    path = shutil.which("kcat")
    if path is None:
        pytest.skip("kcat is not installed (make test installs Debian's kcat package)")
    return path


def kcat_produce(bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes | None]], tmp: Path,
                 partitioner: str | None = "murmur2_random") -> None:
    """Each (key, value) as one message, sent by kcat: a value from a file (any bytes but none: kcat skips
    empty files); a None value, a tombstone, through stdin with -Z (the key then must not hold a tab or
    a newline). `partitioner=None` leaves kcat's default (consistent_random: CRC32, not murmur2)."""
    kcat = need_kcat()
    tmp.mkdir(parents=True, exist_ok=True)
    options = ["-X", "message.max.bytes=4000000", "-q"]
    if partitioner is not None:
        options += ["-X", f"partitioner={partitioner}"]
    by_key: dict = {}
    tombstones = []
    for i, (key, value) in enumerate(messages):  # one kcat run per key: -k sets the key of all its files
        if value is None:
            tombstones.append(key)
            continue
        assert value, "kcat skips an empty file: send empty messages another way"
        path = tmp / f"m{len(list(tmp.iterdir()))}-{i}"
        path.write_bytes(value)
        by_key.setdefault(key, []).append(str(path))
    runs = []
    for key, files in by_key.items():
        runs.append(([kcat, "-P", "-b", bootstrap, "-t", topic, *options, *([] if key is None else ["-k", key])]
                     + files, None))
    if tombstones:
        assert all(k is not None and b"\t" not in k and b"\n" not in k for k in tombstones)
        runs.append(([kcat, "-P", "-b", bootstrap, "-t", topic, *options, "-K", "\t", "-Z"],
                     b"".join(k + b"\t\n" for k in tombstones)))
    for args, stdin in runs:
        out = subprocess.run(args, input=stdin, capture_output=True, timeout=60)
        assert out.returncode == 0, out.stderr.decode(errors="replace")[-2000:]


def kcat_lines(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]], partitioner: str | None) -> None:
    """Keyed text messages through kcat's stdin, one `key<TAB>value` line each."""
    kcat = need_kcat()
    args = [kcat, "-P", "-b", bootstrap, "-t", topic, "-K", "\t", "-q"]
    if partitioner is not None:
        args += ["-X", f"partitioner={partitioner}"]
    data = b"".join(k + b"\t" + v + b"\n" for k, v in messages)
    out = subprocess.run(args, input=data, capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr.decode(errors="replace")[-2000:]


def _event(sid, step=0, **extra) -> bytes:
    obj = {"stream_id": sid, "step": step, "features": [0.5, -0.5, 0.25]}
    obj.update(extra)
    return json.dumps(obj).encode()


def _lone(field: str, value) -> bytes:
    """An event whose `field` holds a lone surrogate (valid JSON, no UTF-8 text)."""
    obj = {"stream_id": "lone", "step": 0, "features": [1, 2, 3], field: value}
    return json.dumps(obj).encode()  # ensure_ascii: the surrogate is written \\udXXX


def _random_json(rng, depth: int = 0):
    kind = int(rng.integers(0, 6 if depth < 4 else 3))
    if kind == 0:
        return float(rng.normal() * 10 ** int(rng.integers(-5, 30)))
    if kind == 1:
        return "".join(map(chr, rng.integers(32, 0x3000, int(rng.integers(0, 30)))))
    if kind == 2:
        return [None, True, False][int(rng.integers(3))]
    if kind in (3, 4):
        return [_random_json(rng, depth + 1) for _ in range(int(rng.integers(0, 5)))]
    keys = ["step", "features", "ts", "end", "x", "Stream_id", "stream id"]
    return {keys[int(rng.integers(len(keys)))]: _random_json(rng, depth + 1) for _ in range(int(rng.integers(0, 4)))}


def bad_corpus(seed: int = 0) -> list[tuple[bytes | None, bytes | None, str | None]]:
    """(key, value, expected dead-letter code or None) of every bad message; each must give one dead letter."""
    rng = np.random.default_rng(seed)
    out: list = []

    def add(value, code, key=b"bad"):
        out.append((key, value, code))

    for n in (1, 17, 300, 5000, 60_000):  # random bytes
        add(rng.integers(0, 256, n, dtype=np.uint8).tobytes(), None)
    for _ in range(10):  # random JSON that is not an event
        add(json.dumps(_random_json(rng)).encode(), None)
    add(b"[" * 100_000 + b"]" * 100_000, schema.INVALID_JSON)  # deeply nested
    add(b'{"a":' * 50_000 + b"1" + b"}" * 50_000, schema.INVALID_JSON)
    add(b'{"stream_id": ' + b"[" * 900 + b"]" * 900 + b', "features": [1, 2, 3]}', schema.INVALID_STREAM_ID)
    # lone surrogates in every string field (the first crashed serve: UnicodeEncodeError on the output key)
    add(json.dumps({"stream_id": "\ud800", "step": 0, "features": [1, 2, 3]}).encode(), schema.INVALID_STREAM_ID)
    add(json.dumps({"stream_id": "s\udfffx", "features": [1, 2, 3]}).encode(), schema.INVALID_STREAM_ID)
    add(_lone("step", "\ud800"), schema.INVALID_STEP)
    add(_lone("ts", "\udbff"), schema.INVALID_TS)
    add(_lone("reset", "\ud800"), schema.INVALID_RESET)
    add(_lone("end", "\udc00"), schema.INVALID_END)
    add(json.dumps({"stream_id": "lone", "features": ["\ud800", 1, 2]}).encode(), schema.INVALID_FEATURES)
    add(json.dumps({"stream_id": "lone", "features": [[1, 2, 3], ["\udc01", 1, 2]]}).encode(),
        schema.INVALID_FEATURES)
    add(b'{"stream_id": "\xed\xa0\x80", "features": [1, 2, 3]}', schema.INVALID_UTF8)  # UTF-8 of a surrogate
    # huge numbers
    add(b'{"stream_id": "n", "features": [1e400, 0, 0]}', schema.NON_FINITE_FEATURES)
    add(b'{"stream_id": "n", "features": [3.5e38, 0, 0]}', schema.NON_FINITE_FEATURES)
    add(b'{"stream_id": "n", "features": [' + b"9" * 5000 + b', 0, 0]}', schema.INVALID_JSON)
    add(b'{"stream_id": "n", "step": 1e400, "features": [0, 0, 0]}', schema.INVALID_STEP)
    add(b'{"stream_id": "n", "step": 1000000000000000000000000000000, "features": [0, 0, 0]}', schema.INVALID_STEP)
    add(b'{"stream_id": "n", "ts": -1e400, "features": [0, 0, 0]}', schema.INVALID_TS)
    # huge strings just under and over each limit
    add(b"x" * (MAX_MESSAGE_BYTES + 1), schema.MESSAGE_TOO_LARGE)
    filler = MAX_MESSAGE_BYTES - len(b'{"stream_id": "big", "features": ""}')
    add(b'{"stream_id": "big", "features": "' + b"f" * filler + b'"}', schema.INVALID_FEATURES)
    add(b'{"stream_id": "' + b'\\"' * 22_000 + b'", "features": [1, 2, 3]}', schema.INVALID_STREAM_ID)  # fits
    add(b'{"stream_id": "' + b'\\"' * 30_000 + b'", "features": [1, 2, 3]}', schema.INVALID_STREAM_ID)  # cut
    add(b'"' * 60_000, schema.INVALID_JSON)  # 60 KB of quotes: a 120 KB dead letter
    add(b"\xff\xfe" * 40_000, schema.INVALID_UTF8)  # 80 KB: base64 makes 107 KB
    add(_event("s" * 257), schema.INVALID_STREAM_ID)
    add(_event("\U0001F600" * 257), schema.INVALID_STREAM_ID)
    # NUL bytes
    add(b"\x00" * 20_000, schema.INVALID_JSON)  # each NUL is written \u0000: a 120 KB dead letter
    add(_event("nul") + b"\x00", schema.INVALID_JSON)
    # tombstones, empty and missing keys
    add(None, schema.INVALID_JSON)  # a tombstone (kcat -Z)
    add(b"", schema.INVALID_JSON, key=None)  # empty, without a key (kafka-python)
    add(b"", schema.INVALID_JSON)
    add(b"not json at all", schema.INVALID_JSON, key=None)
    # events keyed wrongly (--on-key-mismatch reject): no key, another key
    add(_event("km-missing"), schema.KEY_MISMATCH, key=None)
    add(_event("km-other"), schema.KEY_MISMATCH, key=b"someone-else")
    return out


def weird_stream_ids() -> list[str]:
    """Valid stream ids at the edges: the longest, the longest in emoji, a NUL character, non-ASCII."""
    return ["w" * schema.MAX_STREAM_ID_CHARS, "\U0001F600" * schema.MAX_STREAM_ID_CHARS, "nul\x00id", "é-ü-ß"]


def compact_chunk(sid: str, xs: np.ndarray) -> bytes:
    """A chunk event with its features written compactly: whole numbers as integers (a 100k-step chunk of
    single digits stays under 1 MB)."""
    rows = ",".join("[" + ",".join("%d" % v if float(v).is_integer() else repr(float(v)) for v in row) + "]"
                    for row in xs.tolist())
    return (json.dumps({"stream_id": sid, "step": 0})[:-1] + ', "features": [' + rows + "]}").encode()
