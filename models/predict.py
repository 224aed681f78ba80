"""Offline prediction on variable-length sequences: bucketed, post-padded, right shapes every time.

Never `model.predict` on varying lengths: with a TimeDistributed layer it silently returns (1, 1, k)
after the first length. `predict_sequences` fixes TimeDistributed(Dense) (see `models.compat`), sorts the
sequences into buckets of similar length, post-pads each bucket (a forward RNN is causal: a real step's
output cannot depend on pads that come after it) and runs one compiled forward pass per bucket with a
fully dynamic (batch, time) signature; models that still hold a wrapper it cannot vouch for run eagerly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from models.data import SeqRecord, post_pad
from models.errors import DataError, ModelError

KERAS_FILE = "model.keras"
DEFAULT_BATCH_SIZE = 64


def resolve_keras_path(path) -> Path:
    """`path` itself if it is a file, DIR/model.keras for a `streamer train` directory; else ModelError."""
    p = Path(path)
    if p.is_dir():
        if (p / KERAS_FILE).is_file():
            return p / KERAS_FILE
        raise ModelError(f"{p}: no {KERAS_FILE} in this directory; expected a `streamer train --out` "
                         "directory or a .keras file")
    if p.is_file():
        return p
    raise ModelError(f"{p}: no such file or directory; expected a .keras file or a `streamer train` directory")


def load_keras_model(path):
    """Load a .keras file or a `streamer train` directory with safe_mode=True (no compile state).

    A model with a Lambda layer is refused with one line; a missing or broken file gives a ModelError.
    """
    from models.serving import load_keras_model as load_file

    p = resolve_keras_path(path)
    if p.suffix != ".keras":
        raise ModelError(f"{p}: expected a .keras file (Keras 3 format) or a `streamer train` directory")
    return load_file(p)


class Forward:
    """`model` as a function of one padded (B, T, F) batch, for any B and T (compiled once)."""

    def __init__(self, model):
        import tensorflow as tf

        from models.architectures import model_io_sizes
        from models.compat import fix_time_distributed, has_time_distributed

        self.feature_size, self.output_size = model_io_sizes(model)
        self.model = fix_time_distributed(model)
        self.eager = has_time_distributed(self.model)  # e.g. TimeDistributed(Conv...): stay eager, always right
        if self.eager:
            self._fn = None
        else:
            spec = tf.TensorSpec((None, None, self.feature_size), tf.float32)
            self._fn = tf.function(lambda x: self.model(x, training=False), input_signature=[spec])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.eager:
            y = self.model(x, training=False)
        else:
            y = self._fn(x)
        return np.asarray(y, dtype=np.float32)


def _as_features(seq, index: int, feature_size: int) -> np.ndarray:
    x = seq.features if isinstance(seq, SeqRecord) else seq
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] != feature_size:
        raise DataError(f"sequence {index} has shape {x.shape}; expected (steps >= 1, {feature_size})")
    if not np.isfinite(x).all():
        raise DataError(f"sequence {index} has NaN or infinite values")
    return x


def predict_sequences(
    model,
    sequences: Sequence[np.ndarray] | Sequence[SeqRecord],
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_batch_steps: int = 262_144,
) -> list[np.ndarray]:
    """Per-step outputs: one (len_i, O) float32 array per sequence, in input order.

    `sequences`: (len_i, F) arrays (or `SeqRecord`s). Sequences are bucketed by length; a bucket holds
    at most `batch_size` sequences and `max_batch_steps` padded steps. `model` may be a Keras model or
    a `Forward` (reuse one across calls to compile only once).
    """
    forward = model if isinstance(model, Forward) else Forward(model)
    xs = [_as_features(s, i, forward.feature_size) for i, s in enumerate(sequences)]
    if batch_size < 1:
        raise DataError(f"batch size must be >= 1, got {batch_size}")
    lengths = np.array([len(x) for x in xs], dtype=np.int64)
    order = np.argsort(lengths, kind="stable")
    out: list[np.ndarray | None] = [None] * len(xs)
    start = 0
    while start < len(order):
        longest = lengths[order[min(start + batch_size, len(order)) - 1]]
        n = int(max(1, min(batch_size, max_batch_steps // max(int(longest), 1))))
        idx = order[start : start + n]
        y = forward(post_pad([xs[i] for i in idx]))
        for row, i in enumerate(idx):
            out[i] = y[row, : lengths[i]].copy()
        start += n
    return out  # type: ignore[return-value]


def evaluate(model, records: Sequence[SeqRecord], batch_size: int = DEFAULT_BATCH_SIZE) -> float:
    """Per-step accuracy over all real steps: argmax match for several outputs, 0.5 threshold for one."""
    if not records or any(r.targets is None for r in records):
        raise DataError("evaluate needs sequences with targets")
    return step_accuracy(records, predict_sequences(model, records, batch_size=batch_size))


def step_accuracy(records: Sequence[SeqRecord], preds: Sequence[np.ndarray]) -> float:
    """Fraction of real steps whose prediction matches the target (argmax, or 0.5 threshold for 1 output)."""
    correct = total = 0
    for r, p in zip(records, preds):
        if r.targets is None or p.shape != r.targets.shape:
            raise DataError(f"sequence {r.id!r}: targets {None if r.targets is None else r.targets.shape} "
                            f"do not match the predictions {p.shape}")
        if p.shape[1] == 1:
            hit = (p[:, 0] > 0.5) == (r.targets[:, 0] > 0.5)
        else:
            hit = p.argmax(axis=1) == r.targets.argmax(axis=1)
        correct += int(hit.sum())
        total += len(hit)
    return correct / total


def write_predictions(records: Sequence[SeqRecord], preds: Sequence[np.ndarray], stream) -> None:
    """One JSON line per sequence: {"id": ..., "predictions": [[...], ...]} (one row per real step)."""
    import json

    for r, p in zip(records, preds):
        stream.write(json.dumps({"id": r.id, "predictions": p.tolist()}) + "\n")


def atomic_write_text(path, text: str) -> None:
    """Write `text` to `path` via a temporary file, so a failure never leaves half a file behind."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, p)
