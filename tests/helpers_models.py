"""Small helpers shared by the models/ tests (TensorFlow is imported lazily)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def tiny_model(cell="lstm", units=(6, 4), masking=True, feature_size=5, output_size=2, seed=0, **kw):
    """A small compiled model (fast to build and run) with the default architecture's shape."""
    from models.architectures import build_model

    return build_model(feature_size, output_size, cell=cell, units=units, masking=masking, seed=seed, **kw)


def qa_style_model(seed=0):
    """The Q&A's model as written: LSTM 32 -> LSTM 8 -> TimeDistributed(Dense(2, sigmoid))."""
    import keras

    from models.train import qa_model

    keras.utils.set_random_seed(seed)
    return qa_model()


def random_sequences(lengths, feature_size=5, seed=0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random((int(n), feature_size), dtype=np.float32) for n in lengths]


def write_lines(path: Path, lines) -> Path:
    """Write JSONL: dicts are dumped, strings written as they are."""
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write((json.dumps(line) if isinstance(line, dict) else line) + "\n")
    return path


def eager(model, x: np.ndarray) -> np.ndarray:
    """One sequence (T, F) through the model eagerly, unpadded: (T, O)."""
    return np.asarray(model(x[None], training=False))[0]
