"""Sequence data: the Q&A's synthetic task, JSONL readers with line-numbered errors, padding.

A sequence is a `SeqRecord`: `features` (T, F) float32 (or, for a token model, (T,) int64 token ids)
and, for training, `targets` (T, O) float32. Everything here is numpy only (no TensorFlow), so readers
are cheap to import and test.

JSONL format, one sequence per line::

    {"id": "optional", "features": [[f1, ..., fF], ...], "targets": [[t1, ..., tO], ...]}
    {"id": "optional", "features": [17, 4, 9]}          # token ids (a model that starts with Embedding)

A token sequence's "features" is a flat list of JSON integers from 0 (below the vocabulary size when
one is given); 3.0, booleans and negatives are refused. All sequences of a file are of one kind.
Bad lines are refused with `DataError("data.jsonl line 17: ...")`; blank lines are skipped.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import IO, Iterable, Sequence

import numpy as np

from models.errors import DataError

QA_FEATURE_SIZE = 5
QA_OUTPUT_SIZE = 2
QA_THRESHOLD = 2.5
QA_LAGS = 4  # target at t sums x[t,0] and x[t-i, i] for i in 1..4


@dataclass(frozen=True)
class SeqRecord:
    """One sequence: `features` (T, F) float32 or (T,) int64 token ids, `targets` (T, O) float32 or
    None, and its id."""

    id: str | int
    features: np.ndarray
    targets: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.features.shape[0])


# --------------------------------------------------------------------------- synthetic (the Q&A task)


def qa_targets(x: np.ndarray) -> np.ndarray:
    """The Q&A's labels for features `x` (T, F>=5): one-hot of `x[t,0] + sum_i x[t-i,i] > 2.5`.

    Terms with t-i < 0 are absent (exactly like the Q&A's `y[:, i:] += x[:, :-i, i]`).
    Column 0 is "false", column 1 is "true" (like `to_categorical(y > 2.5)`).
    """
    x = np.asarray(x)
    s = x[:, 0].astype(np.float64)
    for i in range(1, QA_LAGS + 1):
        s[i:] += x[: max(len(x) - i, 0), i]  # empty when the sequence is shorter than the lag
    positive = s > QA_THRESHOLD
    return np.stack([~positive, positive], axis=1).astype(np.float32)


def synthetic_sequences(
    n: int,
    min_len: int = 10,
    max_len: int = 100,
    feature_size: int = QA_FEATURE_SIZE,
    seed: int | np.random.Generator | None = 0,
) -> list[SeqRecord]:
    """`n` sequences of the Q&A task; each length drawn uniformly from min_len..max_len inclusive.

    Features are uniform in [0, 1)^F (F >= 5; features past the fifth are noise the model must ignore).
    """
    if n < 1:
        raise DataError(f"number of sequences must be >= 1, got {n}")
    if not 1 <= min_len <= max_len:
        raise DataError(f"lengths must satisfy 1 <= min_len <= max_len, got min_len={min_len} max_len={max_len}")
    if feature_size < QA_FEATURE_SIZE:
        raise DataError(f"the synthetic task needs feature_size >= {QA_FEATURE_SIZE}, got {feature_size}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    lengths = rng.integers(min_len, max_len + 1, size=n)
    out = []
    for i, length in enumerate(lengths):
        x = rng.random((int(length), feature_size), dtype=np.float32)
        out.append(SeqRecord(id=i, features=x, targets=qa_targets(x)))
    return out


# --------------------------------------------------------------------------- JSONL reading


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number")


def _matrix(value, key: str, width: int | None) -> np.ndarray:
    """Validate a list of steps (each a list of numbers) and return it as (T, W) float32."""
    if not isinstance(value, list) or not value:
        raise ValueError(f'"{key}" must be a non-empty list of steps, each a list of numbers')
    for t, row in enumerate(value):
        if not isinstance(row, list) or not row:
            raise ValueError(f'"{key}" step {t} must be a non-empty list of numbers, got {type(row).__name__}')
        if width is None:
            width = len(row)
        if len(row) != width:
            raise ValueError(f'"{key}" step {t} has {len(row)} values, expected {width} like the other steps')
        for v in row:
            if type(v) not in (int, float):
                raise ValueError(f'"{key}" step {t} has a non-number {json.dumps(v)[:40]}')
    arr = np.asarray(value, dtype=np.float64)
    if not np.isfinite(arr).all():  # large ints overflowing, or NaN/inf that slipped through
        t = int(np.argwhere(~np.isfinite(arr))[0][0])
        raise ValueError(f'"{key}" step {t} has a non-finite value')
    too_large = np.abs(arr) > np.finfo(np.float32).max
    if too_large.any():
        t = int(np.argwhere(too_large)[0][0])
        raise ValueError(f'"{key}" step {t} has a value too large for float32')
    return arr.astype(np.float32)


INPUT_KINDS = ("float", "tokens")


def _kind_of(value) -> str | None:
    """"tokens" for a flat list (of anything but lists), "float" for a list of lists, None otherwise."""
    if isinstance(value, list) and value:
        return "float" if isinstance(value[0], list) else "tokens"
    return None


def _tokens(value, vocab_size: int | None) -> np.ndarray:
    """Validate a flat list of token ids (JSON integers 0..vocab_size-1) and return it as (T,) int64."""
    if not isinstance(value, list) or not value:
        raise ValueError('"features" must be a non-empty list of token ids (integers)')
    for t, v in enumerate(value):
        if type(v) is not int or v < 0 or (vocab_size is not None and v >= vocab_size):
            upper = f" to {vocab_size - 1}" if vocab_size is not None else " or more"
            raise ValueError(f'"features" step {t} is {json.dumps(v)[:40]}, expected a token id: an integer '
                             f'from 0{upper}')
    if max(value) >= 2**63:
        raise ValueError('"features" has a token id too large for int64')
    return np.array(value, dtype=np.int64)


def parse_record(
    line: str,
    index: int,
    feature_size: int | None = None,
    output_size: int | None = None,
    targets: str = "required",
    input_kind: str | None = None,
    vocab_size: int | None = None,
) -> SeqRecord:
    """Parse one JSONL line (raises ValueError with the reason; callers add file and line).

    `targets`: "required", "optional" (kept when present) or "ignored". `index` is the default id.
    `input_kind`: "float" (a list of steps, each a list of numbers), "tokens" (a flat list of token ids,
    each below `vocab_size` when given), or None (whichever the line holds).
    """
    try:
        obj = json.loads(line, parse_constant=_refuse_constant)
    except (json.JSONDecodeError, ValueError) as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object with \"features\", got {type(obj).__name__}")
    if "features" not in obj:
        raise ValueError('missing "features" (a list of steps, each a list of numbers)')
    rid = obj.get("id", index)
    if rid is None:
        rid = index
    if type(rid) not in (str, int):
        raise ValueError(f'"id" must be a string or an integer, got {type(rid).__name__}')
    kind = input_kind or _kind_of(obj["features"]) or "float"
    if kind == "tokens":
        if _kind_of(obj["features"]) == "float":
            raise ValueError('"features" is a list of lists; token ids are expected here: a flat list of '
                             'integers, e.g. [17, 4, 9]')
        x = _tokens(obj["features"], vocab_size)
    else:
        x = _matrix(obj["features"], "features", feature_size)
    y = None
    if targets != "ignored" and obj.get("targets") is not None:
        y = _matrix(obj["targets"], "targets", output_size)
        if len(y) != len(x):
            raise ValueError(f'"targets" has {len(y)} steps but "features" has {len(x)}; they must match')
    elif targets == "required":
        raise ValueError('missing "targets" (one list of numbers per step, same number of steps as "features")')
    return SeqRecord(id=rid, features=x, targets=y)


def iter_jsonl(
    lines: Iterable[str],
    name: str,
    targets: str = "required",
    feature_size: int | None = None,
    input_kind: str | None = None,
    vocab_size: int | None = None,
):
    """Yield `SeqRecord`s from JSONL lines; a bad line raises `DataError("NAME line N: ...")`.

    Feature (and target) widths must agree across all lines (and with `feature_size` if given); so must
    the kind of input (`input_kind`, "float" or "tokens"; None: that of the first line). Token ids must
    be below `vocab_size` when given. Default ids are the 0-based line index. Blank lines are skipped.
    """
    if input_kind not in (None, *INPUT_KINDS):
        raise ValueError(f"input_kind must be one of {INPUT_KINDS} or None, got {input_kind!r}")
    output_size = None
    first_line = None
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = parse_record(line, lineno - 1, feature_size if input_kind != "tokens" else None,
                               output_size, targets, input_kind, vocab_size)
        except ValueError as exc:
            hint = ""
            if feature_size is not None and "values, expected" in str(exc) and first_line is None:
                hint = " (the model's feature size)"
            raise DataError(f"{name} line {lineno}: {exc}{hint}") from None
        if first_line is None:
            first_line = lineno
            input_kind = "tokens" if rec.features.ndim == 1 else "float"
        if rec.features.ndim == 2:
            feature_size = rec.features.shape[1]
        if rec.targets is not None:
            output_size = rec.targets.shape[1]
        yield rec


def read_jsonl(
    source: str | os.PathLike | IO[str],
    targets: str = "required",
    feature_size: int | None = None,
    input_kind: str | None = None,
    vocab_size: int | None = None,
) -> list[SeqRecord]:
    """Read a JSONL file (path, or an open text file such as stdin) into a list of `SeqRecord`s.

    `targets="required"` for training data, `"optional"` for prediction inputs. For a model's input,
    pass its `input_kind` ("float" or "tokens") and, for tokens, its `vocab_size`: a token sequence is
    then a (T,) int64 array of ids (see `iter_jsonl`).
    Raises `DataError` for a missing/unreadable file, a bad line (with its number), or no sequences.
    """
    kind = {"input_kind": input_kind, "vocab_size": vocab_size}
    if hasattr(source, "read"):
        name = getattr(source, "name", "<input>")
        name = "<stdin>" if name in ("<stdin>", 0) else os.path.basename(str(name))
        records = list(iter_jsonl(source, name, targets, feature_size, **kind))
    else:
        path = os.fspath(source)
        name = os.path.basename(path)
        try:
            with open(path, encoding="utf-8") as f:
                records = list(iter_jsonl(f, name, targets, feature_size, **kind))
        except FileNotFoundError:
            raise DataError(f"{path}: no such file; expected a JSONL file with one sequence per line") from None
        except IsADirectoryError:
            raise DataError(f"{path}: is a directory; expected a JSONL file with one sequence per line") from None
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text ({exc.reason}); expected a JSONL file") from None
        except OSError as exc:
            raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    if not records:
        raise DataError(f"{name}: no sequences (the file is empty); expected one JSON object per line")
    return records


def write_jsonl(records: Iterable[SeqRecord], path: str | os.PathLike) -> None:
    """Write records as JSONL (features and, when present, targets); the inverse of `read_jsonl`."""
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            obj = {"id": r.id, "features": r.features.tolist()}
            if r.targets is not None:
                obj["targets"] = r.targets.tolist()
            f.write(json.dumps(obj) + "\n")


# --------------------------------------------------------------------------- padding


def post_pad(arrays: Sequence[np.ndarray], length: int | None = None, value: float = 0.0) -> np.ndarray:
    """Stack (T_i, W) arrays into (B, length, W) float32, real steps first, then `value` pads
    (post-padding). Token sequences, (T_i,) integer arrays, give (B, length) int64 padded with
    int(value) (0, the id Embedding(mask_zero=True) masks)."""
    length = max(len(a) for a in arrays) if length is None else length
    if arrays[0].ndim == 1:
        out = np.full((len(arrays), length), int(value), dtype=np.int64)
        for i, a in enumerate(arrays):
            out[i, : len(a)] = a
        return out
    width = arrays[0].shape[1]
    out = np.full((len(arrays), length, width), value, dtype=np.float32)
    for i, a in enumerate(arrays):
        out[i, : len(a)] = a
    return out


def step_mask(lengths: Sequence[int], length: int | None = None) -> np.ndarray:
    """(B, length) float32: 1 on real steps, 0 on post-pads."""
    lengths = np.asarray(lengths)
    length = int(lengths.max()) if length is None else length
    return (np.arange(length)[None, :] < lengths[:, None]).astype(np.float32)


def length_stats(records: Sequence[SeqRecord]) -> dict:
    """min/max/mean length and step count, for manifests."""
    lengths = np.array([len(r) for r in records])
    return {
        "count": int(len(lengths)),
        "min": int(lengths.min()),
        "max": int(lengths.max()),
        "mean": round(float(lengths.mean()), 2),
        "steps": int(lengths.sum()),
    }
