"""Load a servable StepModel from whatever the user points at.

`load_step_model(path)` accepts
  - a converted directory (step_model.json + step_model.npz, from `streamer convert`),
  - a `streamer train` output directory (has model.keras; converted on the fly),
  - a `.keras` file or a legacy `.h5` full-model file (Keras 2 / tf.keras; converted on the fly).
Keras files are read by `models.keras_files`: Lambda layers and custom classes are refused before
anything is deserialised, and loading uses safe_mode=True. TensorFlow SavedModel directories and
weights-only files are refused with one line saying what to export instead.
"""

from __future__ import annotations

from pathlib import Path

from models.keras_files import KERAS_FILE, classify, load_keras_model
from models.stepmodel import StepModel

__all__ = ["KERAS_FILE", "load_keras_model", "load_step_model", "resolve_model_path"]


def resolve_model_path(path) -> tuple[str, Path]:
    """('step', dir) for a converted directory, ('keras' or 'h5', file) for a Keras model; else ModelError."""
    return classify(path)


def load_step_model(path) -> StepModel:
    """A ready-to-serve StepModel from a converted dir, a `streamer train` dir or a .keras/.h5 file."""
    kind, p = classify(path)
    if kind == "step":
        return StepModel.load(p)
    from models.convert import convert_model

    step_model = convert_model(load_keras_model(p))
    step_model.source.setdefault("keras_file", str(p))
    return step_model
