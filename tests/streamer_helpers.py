"""Helpers for the streamer tests: small real StepModels with random weights (no TensorFlow)."""

from __future__ import annotations

import json

import numpy as np

from models.stepmodel import StepModel


def lstm_step_model(feature_size: int = 3, units: tuple[int, ...] = (4,), output_size: int = 2,
                    seed: int = 0, mask_value: float | None = None) -> StepModel:
    """LSTM(units[0]) -> ... -> Dense(output_size, sigmoid), random weights."""
    rng = np.random.default_rng(seed)
    layers, weights = [], {}
    size = feature_size
    for i, u in enumerate(units):
        layers.append({"kind": "lstm", "name": f"lstm_{i}", "units": u})
        weights[f"{i}.kernel"] = rng.normal(0, 0.6, (size, 4 * u)).astype(np.float32)
        weights[f"{i}.recurrent_kernel"] = rng.normal(0, 0.6, (u, 4 * u)).astype(np.float32)
        weights[f"{i}.bias"] = rng.normal(0, 0.2, (4 * u,)).astype(np.float32)
        size = u
    i = len(units)
    layers.append({"kind": "dense", "name": "dense", "units": output_size, "activation": "sigmoid"})
    weights[f"{i}.kernel"] = rng.normal(0, 0.6, (size, output_size)).astype(np.float32)
    weights[f"{i}.bias"] = rng.normal(0, 0.2, (output_size,)).astype(np.float32)
    return StepModel(layers, weights, feature_size, mask_value=mask_value)


def qa_step_model(seed: int = 0) -> StepModel:
    """The Q&A's architecture: LSTM(32) -> LSTM(8) -> Dense(2, sigmoid) on 5 features."""
    return lstm_step_model(5, (32, 8), 2, seed=seed)


def event(stream_id, features, step=None, **extra) -> bytes:
    if isinstance(features, np.ndarray):
        features = features.tolist()
    obj = {"stream_id": stream_id, "features": features}
    if step is not None:
        obj["step"] = step
    obj.update(extra)
    return json.dumps(obj).encode()
