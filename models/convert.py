"""Convert a trained Keras RNN into a `StepModel` by weight transfer.

The Keras model must be a linear chain (Sequential, or a Functional model whose layers feed
each other one after another; nested Sequential/Functional chains are flattened) with one
input `(batch, time, features)` and one output `(batch, time, outputs)`, built from layers
that compute each timestep's output from the past only. Anything else is refused with a
`ConversionError` naming the layer and why it cannot stream.

Keras is imported lazily: this module can be imported without TensorFlow.
"""

from __future__ import annotations

import numpy as np

from models.errors import ConversionError
from models.graph import linear_layers
from models.stepmodel import StepModel

# Identity at inference time (training-only noise/dropout, regularisers).
_IDENTITY = {"InputLayer", "Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout",
             "AlphaDropout", "ActivityRegularization", "Identity"}
_RNN = {"LSTM", "GRU", "SimpleRNN"}
_CELLS = {"LSTMCell": "LSTM", "GRUCell": "GRU", "SimpleRNNCell": "SimpleRNN"}

# Why some well-known layers cannot run one timestep at a time.
_WHY_NOT = {
    "Bidirectional": "it also reads the sequence backwards, so each output depends on future steps",
    "RepeatVector": "it repeats one vector over a new time axis (an encoder-decoder shape), not a per-step map",
    "Lambda": "arbitrary Python code cannot be converted (and .keras files with Lambda need safe_mode=False)",
    "Attention": "attention looks at other timesteps, including future ones",
    "AdditiveAttention": "attention looks at other timesteps, including future ones",
    "MultiHeadAttention": "attention looks at other timesteps, including future ones",
    "GroupQueryAttention": "attention looks at other timesteps, including future ones",
    "Conv1D": "it mixes neighbouring timesteps (a window over the sequence)",
    "Conv1DTranspose": "it mixes neighbouring timesteps",
    "SeparableConv1D": "it mixes neighbouring timesteps",
    "DepthwiseConv1D": "it mixes neighbouring timesteps",
    "ConvLSTM1D": "convolutional recurrent layers are not supported",
    "MaxPooling1D": "it pools over neighbouring timesteps",
    "AveragePooling1D": "it pools over neighbouring timesteps",
    "GlobalMaxPooling1D": "it collapses the time axis (needs the whole sequence)",
    "GlobalAveragePooling1D": "it collapses the time axis (needs the whole sequence)",
    "Flatten": "it collapses the time axis (needs the whole sequence)",
    "Reshape": "it can move data across timesteps",
    "Permute": "it can move data across timesteps",
    "Cropping1D": "it shifts the time axis",
    "ZeroPadding1D": "it shifts the time axis",
    "UpSampling1D": "it changes the number of timesteps",
    "Embedding": "integer token inputs are not supported by the float step model",
    "BatchNormalization": "normalisation layers are not supported by the step model yet",
    "LayerNormalization": "normalisation layers are not supported by the step model yet",
    "PReLU": "PReLU (learned slopes) is not supported by the step model yet",
    "StackedRNNCells": "stacked cells inside one RNN layer are not supported; use one RNN layer per cell",
}

SUPPORTED_LAYERS = ("InputLayer", "Masking", "LSTM", "GRU", "SimpleRNN", "RNN(LSTMCell|GRUCell|SimpleRNNCell)",
                    "Dense", "TimeDistributed(Dense)", "Activation", "ReLU", "LeakyReLU", "ELU", "Softmax",
                    "Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout", "AlphaDropout",
                    "ActivityRegularization", "Identity")


def _np(value) -> np.ndarray:
    import keras

    return np.asarray(keras.ops.convert_to_numpy(value), dtype=np.float32)


def _kind(layer) -> str:
    return type(layer).__name__


def _is_keras_builtin(layer) -> bool:
    """True for Keras's own layer classes; user subclasses may change what `call` computes."""
    return type(layer).__module__.startswith("keras.")


def _activation_name(layer, fn, what="activation"):
    import keras

    try:
        spec = keras.activations.serialize(fn)
    except (ValueError, TypeError):
        spec = None
    if not isinstance(spec, str):
        raise ConversionError(
            f"layer '{layer.name}' ({_kind(layer)}) uses a custom {what} {getattr(fn, '__name__', fn)!r}; "
            "only built-in Keras activations can be converted")
    return spec


class _Chain:
    """Accumulates step-model layer configs and weights while walking the Keras layers."""

    def __init__(self):
        self.layers: list[dict] = []
        self.weights: dict[str, np.ndarray] = {}
        self.mask_value: float | None = None
        self.masking_layer: str | None = None
        self.seen_compute = False  # a layer that changes values has been added

    def add(self, config: dict, **weights):
        i = len(self.layers)
        self.layers.append(config)
        for k, v in weights.items():
            if v is not None:
                self.weights[f"{i}.{k}"] = v
        self.seen_compute = True


def _refuse(layer, why: str, what: str = "cannot stream"):
    raise ConversionError(f"layer '{layer.name}' ({_kind(layer)}) {what}: {why}")


def _check_rnn_options(layer, is_last: bool):
    if getattr(layer, "go_backwards", False):
        _refuse(layer, "go_backwards=True reads the sequence from its end")
    if getattr(layer, "return_state", False):
        _refuse(layer, "return_state=True adds outputs; the step model has one output per step")
    if not getattr(layer, "return_sequences", False):
        where = "it is the last layer" if is_last else "later layers would see only the final step"
        _refuse(layer, f"return_sequences=False gives one output per sequence ({where}); "
                       "retrain with return_sequences=True to get an output at every step")
    # `stateful` only changes how Keras carries state between batches; the step model always
    # carries state explicitly, so the weights mean the same thing. `unroll`, dropout and
    # recurrent_dropout (inactive at inference) and implementation do not change the outputs.


def _add_rnn(chain: _Chain, layer, cell, kind: str, is_last: bool):
    _check_rnn_options(layer, is_last)
    if getattr(cell, "quantization_mode", None):
        _refuse(layer, f"quantized weights ({cell.quantization_mode}) are not supported")
    cfg = {"kind": {"LSTM": "lstm", "GRU": "gru", "SimpleRNN": "simple_rnn"}[kind],
           "name": layer.name, "units": int(cell.units),
           "activation": _activation_name(layer, cell.activation),
           "use_bias": bool(cell.use_bias)}
    if kind != "SimpleRNN":
        cfg["recurrent_activation"] = _activation_name(layer, cell.recurrent_activation,
                                                       "recurrent_activation")
    if kind == "GRU":
        cfg["reset_after"] = bool(cell.reset_after)
    if getattr(layer, "zero_output_for_mask", False):
        cfg["zero_output_for_mask"] = True  # masked steps output zeros instead of the previous h
    chain.add(cfg, kernel=_np(cell.kernel), recurrent_kernel=_np(cell.recurrent_kernel),
              bias=_np(cell.bias) if cell.use_bias else None)


def _add_dense(chain: _Chain, layer, outer=None):
    shown = outer or layer
    if layer.quantization_mode:
        _refuse(shown, f"quantized weights ({layer.quantization_mode}) are not supported")
    chain.add({"kind": "dense", "name": shown.name, "units": int(layer.units),
               "activation": _activation_name(shown, layer.activation),
               "use_bias": bool(layer.use_bias)},
              kernel=_np(layer.kernel), bias=_np(layer.bias) if layer.use_bias else None)


def _add_layer(chain: _Chain, layer, is_last: bool):
    kind = _kind(layer)
    if not _is_keras_builtin(layer):
        base = next((c.__name__ for c in type(layer).__mro__[1:] if c.__module__.startswith("keras.")), "Layer")
        _refuse(layer, f"custom layer class (subclass of {base}) may compute anything; "
                       "only built-in Keras layers can be converted")
    if kind in _IDENTITY:
        return
    if kind in ("Sequential", "Functional"):
        for inner, inner_last in linear_layers(layer, is_last):
            _add_layer(chain, inner, inner_last)
        return
    if kind == "Masking":
        if chain.masking_layer is not None:
            _refuse(layer, f"a second Masking layer (after '{chain.masking_layer}') is not supported",
                    "cannot be converted")
        if chain.seen_compute:
            _refuse(layer, "Masking must come first (before any layer that changes the features), "
                           "so that a masked step is one whose raw input features all equal mask_value",
                    "cannot be converted")
        chain.mask_value = float(layer.mask_value)
        chain.masking_layer = layer.name
        return
    if kind in _RNN:
        _add_rnn(chain, layer, layer.cell, kind, is_last)
        return
    if kind == "RNN":
        cell_kind = _kind(layer.cell)
        if cell_kind not in _CELLS or not _is_keras_builtin(layer.cell):
            _refuse(layer, f"RNN with cell {cell_kind} is not supported; "
                           "use LSTMCell, GRUCell or SimpleRNNCell")
        _add_rnn(chain, layer, layer.cell, _CELLS[cell_kind], is_last)
        return
    if kind == "Dense":
        _add_dense(chain, layer)
        return
    if kind == "TimeDistributed":
        inner = layer.layer
        if _kind(inner) == "Dense" and _is_keras_builtin(inner):
            _add_dense(chain, inner, outer=layer)
            return
        if _kind(inner) in _IDENTITY:
            return
        _refuse(layer, f"TimeDistributed({_kind(inner)}) is not supported; only TimeDistributed(Dense)")
    if kind == "Activation":
        chain.add({"kind": "activation", "name": layer.name,
                   "activation": _activation_name(layer, layer.activation)})
        return
    if kind == "ReLU":
        chain.add({"kind": "activation", "name": layer.name,
                   "activation": {"name": "relu", "negative_slope": float(layer.negative_slope),
                                  "max_value": None if layer.max_value is None else float(layer.max_value),
                                  "threshold": float(layer.threshold)}})
        return
    if kind == "LeakyReLU":
        chain.add({"kind": "activation", "name": layer.name,
                   "activation": {"name": "leaky_relu", "negative_slope": float(layer.negative_slope)}})
        return
    if kind == "ELU":
        chain.add({"kind": "activation", "name": layer.name,
                   "activation": {"name": "elu", "alpha": float(layer.alpha)}})
        return
    if kind == "Softmax":
        axis = layer.axis if isinstance(layer.axis, int) else tuple(layer.axis)
        if axis not in (-1, 2, (-1,), (2,)):
            _refuse(layer, f"Softmax over axis {layer.axis} mixes timesteps; only the last axis streams")
        if chain.mask_value is not None:
            _refuse(layer, "the Softmax layer applies the sequence mask in its own way; "
                           "use Dense(..., activation='softmax') instead")
        chain.add({"kind": "activation", "name": layer.name, "activation": "softmax"})
        return
    why = _WHY_NOT.get(kind)
    if why is None:
        why = f"{kind} is not supported by the step model (supported: {', '.join(SUPPORTED_LAYERS)})"
    _refuse(layer, why)


def _input_features(model) -> int:
    in_shape = tuple(model.inputs[0].shape)
    if len(in_shape) != 3 or in_shape[-1] is None:
        raise ConversionError(
            f"model '{model.name}' takes input of shape {in_shape}; expected (batch, time, features) "
            "with a known number of features, e.g. keras.Input((None, 5))")
    return int(in_shape[-1])


def _output_features(model) -> int:
    out_shape = tuple(model.outputs[0].shape)
    if len(out_shape) != 3 or out_shape[-1] is None:
        raise ConversionError(
            f"model '{model.name}' gives output of shape {out_shape}; expected (batch, time, outputs): "
            "the model must produce an output at every timestep")
    return int(out_shape[-1])


def convert_model(keras_model, *, verify: bool = True) -> StepModel:
    """Turn a trained Keras model into a StepModel by weight transfer.

    With `verify`, the converted model is checked against an eager Keras call on a short
    random sequence (a guard against layer semantics this module does not know about).
    Raises ConversionError (one line naming the layer and why) for models that cannot stream.
    """
    import keras

    if not isinstance(keras_model, keras.Model):
        raise ConversionError(f"expected a keras.Model, got {type(keras_model).__name__}")
    if _kind(keras_model) not in ("Sequential", "Functional") or not _is_keras_builtin(keras_model):
        raise ConversionError(
            f"model '{keras_model.name}' is a subclassed {type(keras_model).__name__}; its call() can "
            "compute anything, so only Sequential and Functional models can be converted")
    if not keras_model.built or not getattr(keras_model, "inputs", None):
        raise ConversionError(
            f"model '{keras_model.name}' has no defined input; build it with an Input layer, "
            "e.g. keras.Sequential([keras.Input((None, 5)), ...])")
    feature_size = _input_features(keras_model)
    chain = _Chain()
    for layer, is_last in linear_layers(keras_model):
        _add_layer(chain, layer, is_last)
    output_size = _output_features(keras_model)
    if not chain.layers:
        raise ConversionError(f"model '{keras_model.name}' has no layer that computes anything")
    source = {"keras_version": keras.__version__, "keras_model": keras_model.name,
              "keras_layers": [f"{layer.name}:{_kind(layer)}" for layer, _ in linear_layers(keras_model)]}
    step_model = StepModel(chain.layers, chain.weights, feature_size, chain.mask_value, source=source)
    if step_model.output_size != output_size:
        raise ConversionError(f"converted model gives {step_model.output_size} outputs per step, "
                              f"but the Keras model gives {output_size}; unsupported layer semantics")
    if verify:
        _verify(keras_model, step_model)
    return step_model


def _verify(keras_model, step_model: StepModel, steps: int = 6) -> None:
    """Compare with an eager Keras call on a short random sequence; ConversionError if they differ."""
    layers = [layer for layer, _ in linear_layers(keras_model)]
    if any(getattr(layer, "stateful", False) for layer in layers):
        return  # calling a stateful Keras model would change its carried state: skip the check
    half = any(getattr(layer, "compute_dtype", "float32") != "float32" for layer in layers)
    tol = 2e-2 if half else 1e-4  # mixed precision Keras computes in float16/bfloat16
    in_shape = tuple(keras_model.inputs[0].shape)
    batch = in_shape[0] or 2
    steps = in_shape[1] or steps  # a fixed-length model can only be called on its own length
    x = np.random.default_rng(0).normal(size=(batch, steps, step_model.feature_size)).astype(np.float32)
    want = np.asarray(keras_model(x, training=False), dtype=np.float32)
    got, _ = step_model.run(x)
    err = float(np.max(np.abs(want - got))) if want.size else 0.0
    if not np.isfinite(err) or err > tol:
        raise ConversionError(
            f"self-check failed: the converted model differs from Keras by {err:.3g} on a random "
            "sequence; the model uses a layer option this converter does not reproduce")
