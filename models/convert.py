"""Convert a trained Keras RNN into a `StepModel` by weight transfer.

The Keras model must be a linear chain (Sequential, or a Functional model whose layers feed
each other one after another; nested Sequential/Functional chains are flattened) with one
input, `(batch, time, features)` numbers or `(batch, time)` token ids into an `Embedding`, and one
output, `(batch, time, outputs)` or, for a many-to-one model, `(batch, outputs)`; built from layers
that compute each timestep's output from the past only. A many-to-one model collapses the time axis
with a last RNN without return_sequences or a GlobalAverage/GlobalMaxPooling1D head (only per-vector
layers may follow); its step model emits, at every step, the model's output on the sequence so far.
Anything else is refused with a `ConversionError` naming the layer and why it cannot stream.

Keras is imported lazily: this module can be imported without TensorFlow.
"""

from __future__ import annotations

import numpy as np

from models.errors import ConversionError, ModelError
from models.graph import linear_layers
from models.layer_ops import MAX_VOCAB, build_op
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
    "Conv1DTranspose": "it mixes neighbouring timesteps",
    "SeparableConv1D": "it mixes neighbouring timesteps",
    "DepthwiseConv1D": "it mixes neighbouring timesteps",
    "ConvLSTM1D": "convolutional recurrent layers are not supported",
    "MaxPooling1D": "it pools over neighbouring timesteps",
    "AveragePooling1D": "it pools over neighbouring timesteps",
    "Flatten": "it collapses the time axis (needs the whole sequence)",
    "Reshape": "it can move data across timesteps",
    "Permute": "it can move data across timesteps",
    "Cropping1D": "it shifts the time axis",
    "ZeroPadding1D": "it shifts the time axis",
    "UpSampling1D": "it changes the number of timesteps",
    "GroupNormalization": "group normalisation is not supported by the step model yet",
    "SpectralNormalization": "spectral normalisation wraps another layer; not supported",
    "Conv2D": "it needs images (batch, height, width, channels), not sequences of steps",
    "GlobalAveragePooling2D": "it needs images, not sequences of steps",
    "GlobalMaxPooling2D": "it needs images, not sequences of steps",
    "PReLU": "PReLU (learned slopes) is not supported by the step model yet",
    "StackedRNNCells": "stacked cells inside one RNN layer are not supported; use one RNN layer per cell",
}

SUPPORTED_LAYERS = ("InputLayer", "Masking", "Embedding", "LSTM", "GRU", "SimpleRNN",
                    "RNN(LSTMCell|GRUCell|SimpleRNNCell)", "Dense", "TimeDistributed(Dense)", "Conv1D(causal)",
                    "Activation", "ReLU", "LeakyReLU", "ELU", "Softmax", "LayerNormalization",
                    "RMSNormalization", "BatchNormalization", "Normalization", "UnitNormalization", "Rescaling",
                    "GlobalAveragePooling1D", "GlobalMaxPooling1D", "Flatten (after a many-to-one collapse)",
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

    def __init__(self, width: int):
        self.width = width  # the feature size the next layer receives
        self.layers: list[dict] = []
        self.weights: dict[str, np.ndarray] = {}
        self.mask_value: float | None = None
        self.masking_layer: str | None = None
        self.seen_compute = False  # a layer that changes values has been added
        self.token_input = False  # the model takes (batch, time) token ids: an Embedding must come first
        self.collapsed: str | None = None  # the layer that collapsed the time axis (many-to-one)

    @property
    def rank(self) -> int:
        """The rank of the tensor the next layer receives: (batch, time, features), or (batch, units)."""
        return 2 if self.collapsed else 3

    def add(self, config: dict, **weights):
        """Append a step-model layer (built once here, so a misfit names its Keras layer)."""
        i = len(self.layers)
        if self.token_input and i == 0 and config["kind"] != "embedding":
            raise ConversionError(
                f"the model takes (batch, time) input, but its first layer '{config.get('name')}' is not an "
                "Embedding; expected (batch, time, features) input, e.g. keras.Input((None, 5)), or "
                "(batch, time) token ids into an Embedding, e.g. keras.Input((None,), dtype='int32')")
        params = {k: v for k, v in weights.items() if v is not None}
        try:
            self.width = build_op(config, self.width, params).out_size
        except ModelError as exc:
            raise ConversionError(f"layer '{config.get('name')}': {exc}") from None
        self.layers.append(config)
        self.weights.update({f"{i}.{k}": v for k, v in params.items()})
        self.seen_compute = True


def _refuse(layer, why: str, what: str = "cannot stream"):
    raise ConversionError(f"layer '{layer.name}' ({_kind(layer)}) {what}: {why}")


def _check_rnn_options(layer):
    if getattr(layer, "go_backwards", False):
        _refuse(layer, "go_backwards=True reads the sequence from its end")
    if getattr(layer, "return_state", False):
        _refuse(layer, "return_state=True adds outputs; the step model has one output per step")
    # return_sequences=False makes a many-to-one model: its output on the sequence so far is the
    # layers after it applied to this step's h, which the step model gives at every step.
    # `stateful` only changes how Keras carries state between batches; the step model always
    # carries state explicitly, so the weights mean the same thing. `unroll`, dropout and
    # recurrent_dropout (inactive at inference) and implementation do not change the outputs.


def _add_rnn(chain: _Chain, layer, cell, kind: str):
    _check_rnn_options(layer)
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
    if not getattr(layer, "return_sequences", False):
        chain.collapsed = layer.name


def _add_dense(chain: _Chain, layer, outer=None):
    shown = outer or layer
    if layer.quantization_mode:
        _refuse(shown, f"quantized weights ({layer.quantization_mode}) are not supported")
    chain.add({"kind": "dense", "name": shown.name, "units": int(layer.units),
               "activation": _activation_name(shown, layer.activation),
               "use_bias": bool(layer.use_bias)},
              kernel=_np(layer.kernel), bias=_np(layer.bias) if layer.use_bias else None)


def _feature_axis_only(axis, rank: int) -> bool:
    """True when `axis` (an int or a list of ints, as Keras stores it) is exactly the last axis."""
    axes = [axis] if isinstance(axis, int) else list(axis or ())
    return len(axes) == 1 and axes[0] % rank == rank - 1


def _check_feature_axis(chain: _Chain, layer, axis, what: str = "normalises"):
    if not _feature_axis_only(axis, chain.rank):
        _refuse(layer, f"it {what} over axis {axis}; only the feature axis (-1) is a per-step function "
                       "(the time or batch axis would mix timesteps or streams)")


def _add_embedding(chain: _Chain, layer):
    if chain.seen_compute or not chain.token_input:
        where = "after other layers" if chain.seen_compute else "on (batch, time, features) input"
        _refuse(layer, f"an Embedding {where} is not supported; it must be the first layer and read "
                       "(batch, time) token ids, e.g. keras.Input((None,), dtype='int32')")
    if getattr(layer, "quantization_mode", None):
        _refuse(layer, f"quantized weights ({layer.quantization_mode}) are not supported")
    if not 1 <= int(layer.input_dim) <= MAX_VOCAB:
        _refuse(layer, f"input_dim={layer.input_dim}: token ids travel as float32, exact up to "
                       f"{MAX_VOCAB} (2**24); a larger vocabulary cannot be streamed")
    chain.add({"kind": "embedding", "name": layer.name, "input_dim": int(layer.input_dim),
               "output_dim": int(layer.output_dim)}, embeddings=_np(layer.embeddings))
    if layer.mask_zero:  # Keras masks the steps whose id is 0: the step model's mask value 0
        chain.mask_value = 0.0
        chain.masking_layer = layer.name


def _add_layer_norm(chain: _Chain, layer):
    _check_feature_axis(chain, layer, layer.axis)
    rms = bool(getattr(layer, "rms_scaling", False))
    chain.add({"kind": "layer_norm", "name": layer.name, "epsilon": float(layer.epsilon),
               "center": bool(layer.center), "scale": bool(layer.scale), "rms_scaling": rms},
              gamma=_np(layer.gamma) if layer.scale else None,
              beta=_np(layer.beta) if layer.center and not rms else None)


def _add_rms_norm(chain: _Chain, layer):
    _check_feature_axis(chain, layer, layer.axis)
    chain.add({"kind": "rms_norm", "name": layer.name, "epsilon": float(layer.epsilon)},
              scale=_np(layer.scale))


def _add_batch_norm(chain: _Chain, layer):
    _check_feature_axis(chain, layer, layer.axis)
    chain.add({"kind": "batch_norm", "name": layer.name, "epsilon": float(layer.epsilon),
               "center": bool(layer.center), "scale": bool(layer.scale)},
              gamma=_np(layer.gamma) if layer.scale else None, beta=_np(layer.beta) if layer.center else None,
              moving_mean=_np(layer.moving_mean), moving_variance=_np(layer.moving_variance))


def _add_normalization(chain: _Chain, layer):
    import keras

    features = chain.width
    axis = tuple(layer.axis)
    if axis and not _feature_axis_only(list(axis), chain.rank):
        _refuse(layer, f"its statistics are per axis {layer.axis}; only per-feature (axis=-1) or "
                       "global (axis=None) statistics are a per-step function")
    if getattr(layer, "mean", None) is None or getattr(layer, "variance", None) is None:
        _refuse(layer, "it has no mean and variance yet; call adapt() or pass mean= and variance=",
                "cannot be converted")
    mean, var = _np(layer.mean).reshape(-1), _np(layer.variance).reshape(-1)
    if mean.size not in (1, features) or var.size != mean.size:
        _refuse(layer, f"its mean has {mean.size} values for {features} features", "cannot be converted")
    chain.add({"kind": "normalization", "name": layer.name, "invert": bool(layer.invert),
               "epsilon": float(keras.config.epsilon())},
              mean=np.broadcast_to(mean, (features,)).copy(), variance=np.broadcast_to(var, (features,)).copy())


def _add_unit_norm(chain: _Chain, layer):
    _check_feature_axis(chain, layer, layer.axis)
    chain.add({"kind": "unit_norm", "name": layer.name})


def _add_rescaling(chain: _Chain, layer):
    import keras

    features = chain.width
    scale = np.asarray(layer.scale, dtype=np.float32)
    offset = np.asarray(layer.offset, dtype=np.float32)
    for what, v in (("scale", scale), ("offset", offset)):
        if v.size not in (1, features) or (v.size > 1 and v.shape[-1] != features):
            _refuse(layer, f"its {what} has shape {v.shape}; only a number or one value per feature "
                           f"({features}) is a per-step function")
    if scale.size > 1 and keras.config.image_data_format() == "channels_first":
        _refuse(layer, "a per-feature scale with image_data_format='channels_first' is reshaped for images")
    chain.add({"kind": "rescaling", "name": layer.name},
              scale=np.broadcast_to(scale.reshape(-1), (features,)).copy(),
              offset=np.broadcast_to(offset.reshape(-1), (features,)).copy())


def _add_conv1d(chain: _Chain, layer):
    k, d = int(layer.kernel_size[0]), int(layer.dilation_rate[0])
    if layer.data_format != "channels_last":
        _refuse(layer, f"data_format='{layer.data_format}' puts the time axis last; only channels_last streams")
    if int(layer.strides[0]) != 1:
        _refuse(layer, f"strides={layer.strides[0]} gives one output every {layer.strides[0]} steps, "
                       "not one per step")
    if int(getattr(layer, "groups", 1)) != 1:
        _refuse(layer, f"groups={layer.groups} (grouped convolution) is not supported")
    if layer.padding != "causal" and k > 1:
        why = ("padding='same' centres the window, so each output reads future steps"
               if layer.padding == "same" else
               "padding='valid' drops the first kernel_size-1 steps (one output per full window, not per step)")
        _refuse(layer, f"{why}; use padding='causal' to stream a Conv1D")
    if getattr(layer, "quantization_mode", None):
        _refuse(layer, f"quantized weights ({layer.quantization_mode}) are not supported")
    chain.add({"kind": "conv1d_causal", "name": layer.name, "filters": int(layer.filters), "kernel_size": k,
               "dilation_rate": d if k > 1 else 1,
               "activation": _activation_name(layer, layer.activation) if layer.activation else "linear",
               "use_bias": bool(layer.use_bias)},
              kernel=_np(layer.kernel), bias=_np(layer.bias) if layer.use_bias else None)


def _add_global_pool(chain: _Chain, layer):
    if layer.data_format != "channels_last":
        _refuse(layer, f"data_format='{layer.data_format}' pools over the feature axis of (batch, time, "
                       "features); only channels_last streams")
    if layer.keepdims:
        _refuse(layer, "keepdims=True gives (batch, 1, features): one step, not an output per step; "
                       "use keepdims=False")
    kind = "global_avg_pool" if _kind(layer) == "GlobalAveragePooling1D" else "global_max_pool"
    chain.add({"kind": kind, "name": layer.name})
    chain.collapsed = layer.name


def _needs_time_axis(handler):
    """Refuse layers that read a time axis once a many-to-one layer has collapsed it."""
    def checked(chain: _Chain, layer):
        if chain.collapsed:
            _refuse(layer, f"it needs a time axis, but '{chain.collapsed}' already gave one vector per sequence")
        handler(chain, layer)

    return checked


_HANDLERS = {
    "Embedding": _add_embedding,
    "LayerNormalization": _add_layer_norm,
    "RMSNormalization": _add_rms_norm,
    "BatchNormalization": _add_batch_norm,
    "UnitNormalization": _add_unit_norm,
    "Normalization": _add_normalization,
    "Rescaling": _add_rescaling,
    "Conv1D": _needs_time_axis(_add_conv1d),
    "GlobalAveragePooling1D": _needs_time_axis(_add_global_pool),
    "GlobalMaxPooling1D": _needs_time_axis(_add_global_pool),
}


def _add_layer(chain: _Chain, layer, is_last: bool):
    kind = _kind(layer)
    if not _is_keras_builtin(layer):
        base = next((c.__name__ for c in type(layer).__mro__[1:] if c.__module__.startswith("keras.")), "Layer")
        _refuse(layer, f"custom layer class (subclass of {base}) may compute anything; "
                       "only built-in Keras layers can be converted")
    if kind in _IDENTITY or (kind == "Flatten" and chain.collapsed):
        return  # (Flatten of a (batch, units) tensor changes nothing)
    handler = _HANDLERS.get(kind)
    if handler is not None:
        handler(chain, layer)
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
        _add_rnn(chain, layer, layer.cell, kind)
        return
    if kind == "RNN":
        cell_kind = _kind(layer.cell)
        if cell_kind not in _CELLS or not _is_keras_builtin(layer.cell):
            _refuse(layer, f"RNN with cell {cell_kind} is not supported; "
                           "use LSTMCell, GRUCell or SimpleRNNCell")
        _add_rnn(chain, layer, layer.cell, _CELLS[cell_kind])
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


def _input_features(model) -> tuple[int, bool]:
    """(feature size, takes token ids): (F, False) for (batch, time, F) input, (1, True) for (batch, time)."""
    in_shape = tuple(model.inputs[0].shape)
    if len(in_shape) == 2:
        return 1, True  # token ids: the first layer must be an Embedding (checked as the layers are read)
    if len(in_shape) != 3 or in_shape[-1] is None:
        raise ConversionError(
            f"model '{model.name}' takes input of shape {in_shape}; expected (batch, time, features) "
            "with a known number of features, e.g. keras.Input((None, 5)), or (batch, time) token ids "
            "into an Embedding, e.g. keras.Input((None,), dtype='int32')")
    return int(in_shape[-1]), False


def _output_features(model, many_to_one: bool) -> int:
    out_shape = tuple(model.outputs[0].shape)
    if many_to_one:
        if len(out_shape) != 2 or out_shape[-1] is None:
            raise ConversionError(f"model '{model.name}' gives output of shape {out_shape}; a many-to-one "
                                  "model must give (batch, outputs)")
    elif len(out_shape) != 3 or out_shape[-1] is None:
        raise ConversionError(
            f"model '{model.name}' gives output of shape {out_shape}; expected (batch, time, outputs) "
            "(an output at every timestep) or (batch, outputs) after a last RNN without "
            "return_sequences or a global pooling layer (many-to-one)")
    return int(out_shape[-1])


def _check_model(keras_model) -> None:
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


def convert_model(keras_model, *, verify: bool = True) -> StepModel:
    """Turn a trained Keras model into a StepModel by weight transfer.

    With `verify`, the converted model is checked against eager Keras calls on a short random
    sequence (a guard against layer semantics this module does not know about).
    Raises ConversionError (one line naming the layer and why) for models that cannot stream.
    """
    import keras

    _check_model(keras_model)
    feature_size, tokens = _input_features(keras_model)
    chain = _Chain(feature_size)
    chain.token_input = tokens
    for layer, is_last in linear_layers(keras_model):
        _add_layer(chain, layer, is_last)
    if not chain.layers:
        raise ConversionError(f"model '{keras_model.name}' has no layer that computes anything")
    output_size = _output_features(keras_model, chain.collapsed is not None)
    source = {"keras_version": keras.__version__, "keras_model": keras_model.name,
              "keras_layers": [f"{layer.name}:{_kind(layer)}" for layer, _ in linear_layers(keras_model)]}
    step_model = StepModel(chain.layers, chain.weights, feature_size, chain.mask_value, source=source,
                           many_to_one=chain.collapsed is not None)
    if step_model.output_size != output_size:
        raise ConversionError(f"converted model gives {step_model.output_size} outputs per step, "
                              f"but the Keras model gives {output_size}; unsupported layer semantics")
    if verify:
        _verify(keras_model, step_model)
    return step_model


def _verify_input(step_model: StepModel, batch: int, steps: int) -> np.ndarray:
    """A random input: (batch, steps, F) normal floats, or (batch, steps) token ids. With a mask,
    every third step of the first sequence is masked (id 0, or all features at mask_value)."""
    rng = np.random.default_rng(0)
    if step_model.input_kind == "tokens":
        ids = rng.integers(0, step_model.vocab_size, size=(batch, steps))
        ids[0, 1::3] = 0
        return ids.astype(np.int32)
    x = rng.normal(size=(batch, steps, step_model.feature_size)).astype(np.float32)
    if step_model.mask_value is not None:
        x[0, 1::3] = step_model.mask_value
    return x


def _verify(keras_model, step_model: StepModel, steps: int = 6) -> None:
    """Compare with eager Keras calls on a short random sequence; ConversionError if they differ.

    A many-to-one model is called on every prefix x[:, :t+1] (the step model's output at step t),
    unless its input length is fixed: then only on the whole sequence (the output at the last step).
    """
    layers = [layer for layer, _ in linear_layers(keras_model)]
    if any(getattr(layer, "stateful", False) for layer in layers):
        return  # calling a stateful Keras model would change its carried state: skip the check
    half = any(getattr(layer, "compute_dtype", "float32") != "float32" for layer in layers)
    tol = 2e-2 if half else 1e-4  # mixed precision Keras computes in float16/bfloat16
    in_shape = tuple(keras_model.inputs[0].shape)
    batch = in_shape[0] or 2
    fixed = in_shape[1] is not None
    steps = in_shape[1] or steps  # a fixed-length model can only be called on its own length
    x = _verify_input(step_model, batch, steps)
    got, _ = step_model.run(x)
    if not step_model.many_to_one:
        want = np.asarray(keras_model(x, training=False), dtype=np.float32)
    elif fixed:
        want, got = np.asarray(keras_model(x, training=False), dtype=np.float32), got[:, -1]
    else:
        want = np.stack([np.asarray(keras_model(x[:, :t + 1], training=False), dtype=np.float32)
                         for t in range(steps)], axis=1)
    with np.errstate(invalid="ignore"):
        diff = np.abs(want - got)
    same_nan = np.isnan(want) & np.isnan(got)  # e.g. a mean over no unmasked step yet, in both
    err = float(np.max(np.where(same_nan, 0, diff))) if want.size else 0.0
    if not np.isfinite(err) or err > tol:
        raise ConversionError(
            f"self-check failed: the converted model differs from Keras by {err:.3g} on a random "
            "sequence; the model uses a layer option this converter does not reproduce")
