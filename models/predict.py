"""Offline prediction on variable-length sequences: bucketed, post-padded, right shapes every time.

Never `model.predict` on varying lengths: with a TimeDistributed layer it silently returns (1, 1, k)
after the first length. `Forward` first rebuilds a model that pins its batch size or length, or is
stateful, unrolled or uses TimeDistributed(Dense) (see `models.rebuild`), so that any length runs;
`predict_sequences` sorts the sequences into buckets of similar length, post-pads each bucket (a causal
model's real step cannot depend on pads that come after it) and runs one compiled forward pass per
bucket with a fully dynamic (batch, time) signature. Models whose output at a step may depend on later
steps (many-to-one models, Bidirectional, pooling, unknown layers) get buckets of equal length only, so
every sequence is computed exactly as on its own; models that still hold a wrapper it cannot vouch for
run eagerly.

Inputs are float features, (T, F) per sequence, or integer token ids, (T,) per sequence, for a model
whose input is (batch, time) (an Embedding first). A per-step model gives (T, O) per sequence, a
many-to-one model (output (batch, O)) one (O,) row per sequence.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from models.data import SeqRecord
from models.errors import DataError, ModelError

DEFAULT_BATCH_SIZE = 64

# Layers whose output at step t depends on steps <= t only (so post-padding is harmless).
_CAUSAL = {"InputLayer", "Masking", "LSTM", "GRU", "SimpleRNN", "RNN", "Dense", "Activation", "ReLU", "LeakyReLU",
           "ELU", "PReLU", "Softmax", "Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout",
           "AlphaDropout", "ActivityRegularization", "Identity", "Embedding", "LayerNormalization",
           "BatchNormalization", "Normalization", "UnitNormalization", "Rescaling"}


def resolve_keras_path(path) -> Path:
    """The Keras model file `path` points at (a .keras/.h5 file or a `streamer train` directory); else ModelError."""
    from models.keras_files import KERAS_FILE, SPEC_FILE, classify

    p = Path(path)
    if p.is_dir() and not (p / KERAS_FILE).is_file() and not (p / SPEC_FILE).is_file():
        if not (p / "saved_model.pb").is_file():
            raise ModelError(f"{p}: no {KERAS_FILE} in this directory; expected a `streamer train --out` "
                             "directory or a .keras/.h5 model file")
    kind, p = classify(p)
    if kind == "step":
        raise ModelError(f"{p}: a converted step model (step_model.json); offline prediction needs the Keras "
                         "model: give the .keras or .h5 file it was converted from (or stream it with "
                         "`streamer replay`)")
    return p


def load_keras_model(path):
    """Load a .keras/.h5 file or a `streamer train` directory with safe_mode=True (no compile state).

    A model with a Lambda layer or a custom class is refused with one line; a missing or broken file,
    a SavedModel directory or a weights-only file gives a ModelError.
    """
    from models.keras_files import load_keras_model as load_file

    return load_file(resolve_keras_path(path))


@dataclass(frozen=True)
class ModelIO:
    """What a sequence model takes and gives: float features or token ids; per step or per sequence."""

    input_kind: str  # "float" ((batch, time, F) input) or "tokens" ((batch, time) integer ids)
    feature_size: int  # F, or 1 for tokens
    output_size: int
    many_to_one: bool  # output (batch, O) instead of (batch, time, O)
    vocab_size: int | None = None  # tokens: ids must be in [0, vocab_size)


def model_io(model) -> ModelIO:
    """The ModelIO of a Keras sequence model; ModelError if it is not one."""
    in_shape = tuple(model.inputs[0].shape) if getattr(model, "inputs", None) else None
    out_shape = tuple(model.outputs[0].shape) if getattr(model, "outputs", None) else None
    expected = ("expected (batch, time, features) or (batch, time) token ids in, and (batch, time, outputs) "
                "or (batch, outputs) out")
    if in_shape is None or out_shape is None or len(in_shape) not in (2, 3) or len(out_shape) not in (2, 3):
        raise ModelError(f"model {model.name!r} has input {in_shape} and output {out_shape}; {expected}")
    if out_shape[-1] is None or (len(in_shape) == 3 and in_shape[-1] is None):
        raise ModelError(f"model {model.name!r} must have a fixed feature and output size, got {in_shape} -> "
                         f"{out_shape}")
    if len(in_shape) == 3:
        return ModelIO("float", int(in_shape[2]), int(out_shape[-1]), len(out_shape) == 2)
    vocab = next((int(l.input_dim) for l in model.layers if type(l).__name__ == "Embedding"), None)
    return ModelIO("tokens", 1, int(out_shape[-1]), len(out_shape) == 2, vocab)


def _last_axis_only(layer) -> bool:
    """False for a layer that works over an axis other than the features (e.g. Softmax(axis=1))."""
    axis = getattr(layer, "axis", -1)
    axes = axis if isinstance(axis, (list, tuple)) else [axis]
    return all(isinstance(a, int) and a in (-1, 2) for a in axes)


def _is_causal(model) -> bool:
    """True when every layer is known to compute step t from steps <= t (post-padding is then safe)."""
    import keras

    from models.graph import flat_layers

    try:
        layers = flat_layers(model)
    except ModelError:
        return False
    for layer in layers:
        kind = type(layer).__name__
        if kind == "TimeDistributed":
            continue  # a per-step wrapper
        if kind == "Conv1D" and getattr(layer, "padding", None) == "causal":
            continue
        if kind not in _CAUSAL or getattr(layer, "go_backwards", False) or not _last_axis_only(layer):
            return False
        if isinstance(layer, keras.layers.RNN) and not layer.return_sequences:
            return False
    return True


class Forward:
    """`model` as a function of one padded (B, T, F) (or (B, T) token) batch, for any B and T (compiled once)."""

    def __init__(self, model):
        import tensorflow as tf

        from models.compat import has_time_distributed
        from models.rebuild import free_model

        self.io = model_io(model)
        self.feature_size, self.output_size = self.io.feature_size, self.io.output_size
        try:
            self.model = free_model(model)
        except ModelError as exc:
            raise ModelError(f"model {model.name!r} takes input {tuple(model.inputs[0].shape)} or has a stateful or "
                             f"unrolled layer, and cannot be rebuilt to run on any length: {exc}") from None
        self.padding_safe = not self.io.many_to_one and _is_causal(self.model)
        self.eager = has_time_distributed(self.model)  # e.g. TimeDistributed(Conv...): stay eager, always right
        if self.eager:
            self._fn = None
        else:
            spec = self.model.inputs[0]
            shape = (None, None) if self.io.input_kind == "tokens" else (None, None, self.feature_size)
            sig = tf.TensorSpec(shape, tf.as_dtype(spec.dtype))
            self._fn = tf.function(lambda x: self.model(x, training=False), input_signature=[sig])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = x.astype(self.model.inputs[0].dtype, copy=False)
        y = self.model(x, training=False) if self.eager else self._fn(x)
        return np.asarray(y, dtype=np.float32)


def _as_input(seq, index: int, io: ModelIO) -> np.ndarray:
    x = seq.features if isinstance(seq, SeqRecord) else seq
    if io.input_kind == "tokens":
        return _as_tokens(x, index, io)
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] != io.feature_size:
        raise DataError(f"sequence {index} has shape {x.shape}; expected (steps >= 1, {io.feature_size})")
    if not np.isfinite(x).all():
        raise DataError(f"sequence {index} has NaN or infinite values")
    return x


def _as_tokens(x, index: int, io: ModelIO) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 2 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 1 or x.shape[0] < 1:
        raise DataError(f"sequence {index} has shape {x.shape}; expected a flat list of token ids (steps >= 1)")
    if x.dtype.kind == "f":
        if not np.isfinite(x).all() or (x != np.round(x)).any():
            raise DataError(f"sequence {index} has token ids that are not integers")
    elif x.dtype.kind not in "iu":
        raise DataError(f"sequence {index} has token ids of type {x.dtype}; expected integers")
    x = x.astype(np.int64)
    bad = (x < 0) | (x >= io.vocab_size) if io.vocab_size else (x < 0)
    if bad.any():
        t = int(np.argmax(bad))
        raise DataError(f"sequence {index} step {t} has token id {int(x[t])}; expected 0 <= id < "
                        f"{io.vocab_size} (the Embedding's input_dim)")
    return x


def _pad(xs: list[np.ndarray]) -> np.ndarray:
    """Stack (T_i, ...) arrays into (B, T_max, ...), real steps first, then zeros (post-padding)."""
    length = max(len(x) for x in xs)
    out = np.zeros((len(xs), length) + xs[0].shape[1:], dtype=xs[0].dtype)
    for i, x in enumerate(xs):
        out[i, : len(x)] = x
    return out


def _buckets(lengths: np.ndarray, batch_size: int, max_batch_steps: int, same_length: bool):
    """Index arrays of the sequences that run together (sorted by length; equal lengths if same_length)."""
    order = np.argsort(lengths, kind="stable")
    start = 0
    while start < len(order):
        longest = lengths[order[min(start + batch_size, len(order)) - 1]]
        n = int(max(1, min(batch_size, max_batch_steps // max(int(longest), 1))))
        idx = order[start : start + n]
        if same_length:
            idx = idx[lengths[idx] == lengths[idx[0]]]
        yield idx
        start += len(idx)


def predict_sequences(
    model,
    sequences: Sequence[np.ndarray] | Sequence[SeqRecord],
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_batch_steps: int = 262_144,
) -> list[np.ndarray]:
    """Outputs in input order: one (len_i, O) float32 array per sequence, or (O,) for a many-to-one model.

    `sequences`: (len_i, F) float arrays, (len_i,) token-id arrays (or `SeqRecord`s). Sequences are
    bucketed by length; a bucket holds at most `batch_size` sequences and `max_batch_steps` padded steps.
    `model` may be a Keras model or a `Forward` (reuse one across calls to compile only once).
    """
    forward = model if isinstance(model, Forward) else Forward(model)
    xs = [_as_input(s, i, forward.io) for i, s in enumerate(sequences)]
    if batch_size < 1:
        raise DataError(f"batch size must be >= 1, got {batch_size}")
    lengths = np.array([len(x) for x in xs], dtype=np.int64)
    out: list[np.ndarray | None] = [None] * len(xs)
    for idx in _buckets(lengths, batch_size, max_batch_steps, same_length=not forward.padding_safe):
        x = _pad([xs[i] for i in idx])
        y = forward(x)
        if not forward.io.many_to_one and y.shape[1] != x.shape[1]:
            raise ModelError(f"model {forward.model.name!r} gives {y.shape[1]} output steps for {x.shape[1]} input "
                             "steps; expected one output per input step (or one per sequence)")
        for row, i in enumerate(idx):
            out[i] = y[row].copy() if forward.io.many_to_one else y[row, : lengths[i]].copy()
    return out  # type: ignore[return-value]


def evaluate(model, records: Sequence[SeqRecord], batch_size: int = DEFAULT_BATCH_SIZE) -> float:
    """Per-step accuracy over all real steps: argmax match for several outputs, 0.5 threshold for one."""
    if not records or any(r.targets is None for r in records):
        raise DataError("evaluate needs sequences with targets")
    return step_accuracy(records, predict_sequences(model, records, batch_size=batch_size))


def step_accuracy(records: Sequence[SeqRecord], preds: Sequence[np.ndarray]) -> float:
    """Fraction of real steps (or sequences, for a many-to-one model) whose prediction matches the target
    (argmax, or 0.5 threshold for 1 output)."""
    correct = total = 0
    for r, p in zip(records, preds):
        if r.targets is None or p.size != r.targets.size or p.shape[-1] != r.targets.shape[-1]:
            raise DataError(f"sequence {r.id!r}: targets {None if r.targets is None else r.targets.shape} "
                            f"do not match the predictions {p.shape}")
        p, t = p.reshape(-1, p.shape[-1]), r.targets.reshape(-1, p.shape[-1])
        if p.shape[1] == 1:
            hit = (p[:, 0] > 0.5) == (t[:, 0] > 0.5)
        else:
            hit = p.argmax(axis=1) == t.argmax(axis=1)
        correct += int(hit.sum())
        total += len(hit)
    return correct / total


def write_predictions(records: Sequence[SeqRecord], preds: Sequence[np.ndarray], stream) -> None:
    """One JSON line per sequence: {"id": ..., "predictions": [[...], ...]} (one row per real step), or
    {"id": ..., "prediction": [...]} for a many-to-one model (one row per sequence)."""
    import json

    for r, p in zip(records, preds):
        key = "prediction" if p.ndim == 1 else "predictions"
        stream.write(json.dumps({"id": r.id, key: p.tolist()}) + "\n")


def atomic_write_text(path, text: str) -> None:
    """Write `text` to `path` via a temporary file, so a failure never leaves half a file behind."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, p)
