"""More step-model ops, and the registry that builds any op from its step_model.json entry.

Beyond the Dense/activation/RNN ops of `models.kernels`:

- `EmbeddingOp`: token ids in (one id per step, carried as float32: exact below 2**24), vectors out.
- Per-step normalisations: `LayerNormOp`, `RMSNormOp`, `BatchNormOp` (inference statistics),
  `NormalizationOp` (the preprocessing layer, `invert` too), `UnitNormOp`, `RescalingOp`. Each
  reproduces the order of operations of Keras 3 (TensorFlow backend) in float32.
- `CausalConv1DOp`: Conv1D with causal padding. The last (kernel_size - 1) * dilation_rate inputs
  live in the stream's state (a shift buffer, oldest first), so the state grows by that many input
  vectors.
- Global pooling heads (many-to-one): `GlobalAvgPoolOp` keeps a running sum (Kahan-compensated in
  float32) and a count of the steps seen; `GlobalMaxPoolOp` a running max and a "seen" flag.
  Their output at step t is the pooled value of steps 0..t, what the Keras model gives on the
  first t+1 steps.

Same conventions as `models.kernels`: feature-major (features, batch) arrays, state read from this
op's block of `state` and written to the same block of a fresh `new_state`; weights in Keras layout
in `params()`.

Masks: `ends_mask` marks ops after which Keras no longer passes the sequence mask on (Conv1D,
RMSNormalization and GlobalMaxPooling1D do not support masking, so Keras drops it;
GlobalAveragePooling1D consumes it).
`StepModel` gives later ops no mask, exactly like Keras.
"""

from __future__ import annotations

import numpy as np

from models.errors import DataError, ModelError
from models.kernels import F32, OPS as _BASE_OPS, Activation, Op, column, param_f32

MAX_VOCAB = 2**24  # token ids travel as float32 values: every integer up to 2**24 is exact


def _vector(value, size: int, what: str) -> np.ndarray:
    """A per-feature parameter as a float32 (size,) array (a scalar or a (1, ..., size) array is broadcast)."""
    a = np.asarray(value, dtype=F32)
    if a.size == 1:
        return np.full(size, a.reshape(()), dtype=F32)
    a = a.reshape(-1)
    if a.shape != (size,):
        raise ModelError(f"{what} has {a.size} values, expected 1 or {size} (one per feature)")
    return a


class EmbeddingOp(Op):
    """Keras Embedding: a token id per step (input size 1) -> its row of the embedding matrix."""

    kind = "embedding"

    def __init__(self, name, in_size, input_dim, output_dim, embeddings=None):
        super().__init__(name, in_size)
        if self.in_size != 1:
            raise ModelError(f"{name}: an embedding reads one token id per step (input size 1), "
                             f"got input size {self.in_size}")
        self.input_dim = int(input_dim)
        self.out_size = self.output_dim = int(output_dim)
        if not 1 <= self.input_dim <= MAX_VOCAB:
            raise ModelError(f"{name}: input_dim {self.input_dim} is outside 1..{MAX_VOCAB} "
                             "(token ids are carried as float32, exact up to 2**24)")
        self.embeddings = param_f32(embeddings, (self.input_dim, self.output_dim), f"{name}: embeddings")
        self._table_t = np.ascontiguousarray(self.embeddings.T)  # (D, V): a gather gives (D, B)

    def config(self):
        return {"kind": self.kind, "name": self.name, "input_dim": self.input_dim,
                "output_dim": self.output_dim}

    def params(self):
        return {"embeddings": self.embeddings}

    def forward(self, x, state, new_state, keep):
        ids = x[0]
        idx = ids.astype(np.intp)
        if idx.size and (idx.min() < 0 or idx.max() >= self.input_dim or (idx != ids).any()):
            bad = ids[(idx < 0) | (idx >= self.input_dim) | (idx != ids)][0]
            raise DataError(f"token id {float(bad):g} is not an integer from 0 to {self.input_dim - 1} "
                            f"(the vocabulary of '{self.name}')")
        return np.take(self._table_t, idx, axis=1)


class _PerStepOp(Op):
    """An op without state whose output has the size of its input."""

    def __init__(self, name, in_size):
        super().__init__(name, in_size)
        self.out_size = self.in_size


class LayerNormOp(_PerStepOp):
    """Keras LayerNormalization over the feature axis: x * inv + (beta - mean * inv), inv =
    gamma / sqrt(var + eps) (the order of keras.ops.layer_normalization). With the deprecated
    rms_scaling=True Keras scales by the variance, not the mean square: x * rsqrt(var + eps) * gamma."""

    kind = "layer_norm"

    def __init__(self, name, in_size, epsilon=1e-3, center=True, scale=True, rms_scaling=False,
                 gamma=None, beta=None):
        super().__init__(name, in_size)
        self.epsilon = float(epsilon)
        self.center, self.scale, self.rms_scaling = bool(center), bool(scale), bool(rms_scaling)
        f = self.in_size
        self.gamma = param_f32(gamma, (f,), f"{name}: gamma") if self.scale else None
        self.beta = param_f32(beta, (f,), f"{name}: beta") if self.center and not self.rms_scaling else None
        self._g, self._b, self._eps = column(self.gamma), column(self.beta), F32(self.epsilon)

    def config(self):
        return {"kind": self.kind, "name": self.name, "epsilon": self.epsilon, "center": self.center,
                "scale": self.scale, "rms_scaling": self.rms_scaling}

    def params(self):
        return {k: v for k, v in (("gamma", self.gamma), ("beta", self.beta)) if v is not None}

    def forward(self, x, state, new_state, keep):
        mean = x.mean(axis=0, keepdims=True)
        var = np.square(x - mean).mean(axis=0, keepdims=True)
        var += self._eps
        inv = np.sqrt(var)
        np.divide(F32(1), inv, out=inv)
        if self.rms_scaling:
            y = x * inv
            return y * self._g if self._g is not None else y
        if self._g is not None:
            inv = inv * self._g
        res = -mean * inv
        if self._b is not None:
            res = res + self._b  # (without gamma, res is one row: broadcast it)
        y = x * inv
        y += res
        return y


class RMSNormOp(_PerStepOp):
    """Keras RMSNormalization over the feature axis: x * rsqrt(mean(x^2) + eps) * scale. The Keras
    layer does not support masking, so it drops the mask (later layers see every step)."""

    kind = "rms_norm"
    ends_mask = True

    def __init__(self, name, in_size, epsilon=1e-6, scale=None):
        super().__init__(name, in_size)
        self.epsilon = float(epsilon)
        self.scale = param_f32(scale, (self.in_size,), f"{name}: scale")
        self._s, self._eps = column(self.scale), F32(self.epsilon)

    def config(self):
        return {"kind": self.kind, "name": self.name, "epsilon": self.epsilon}

    def params(self):
        return {"scale": self.scale}

    def forward(self, x, state, new_state, keep):
        ms = np.square(x).mean(axis=0, keepdims=True)
        ms += self._eps
        r = np.sqrt(ms)
        np.divide(F32(1), r, out=r)
        y = x * r
        y *= self._s
        return y


class BatchNormOp(_PerStepOp):
    """Keras BatchNormalization at inference, over the feature axis: x * inv + (beta - mean * inv)
    with inv = gamma / sqrt(moving_variance + eps) (tf.nn.batch_normalization's order), folded once."""

    kind = "batch_norm"

    def __init__(self, name, in_size, epsilon=1e-3, center=True, scale=True, gamma=None, beta=None,
                 moving_mean=None, moving_variance=None):
        super().__init__(name, in_size)
        self.epsilon = float(epsilon)
        self.center, self.scale = bool(center), bool(scale)
        f = self.in_size
        self.gamma = param_f32(gamma, (f,), f"{name}: gamma") if self.scale else None
        self.beta = param_f32(beta, (f,), f"{name}: beta") if self.center else None
        self.moving_mean = param_f32(moving_mean, (f,), f"{name}: moving_mean")
        self.moving_variance = param_f32(moving_variance, (f,), f"{name}: moving_variance")
        inv = F32(1) / np.sqrt(self.moving_variance + F32(self.epsilon))
        if self.gamma is not None:
            inv = inv * self.gamma
        res = -self.moving_mean * inv if self.beta is None else self.beta - self.moving_mean * inv
        self._inv, self._res = column(inv), column(res)

    def config(self):
        return {"kind": self.kind, "name": self.name, "epsilon": self.epsilon, "center": self.center,
                "scale": self.scale}

    def params(self):
        p = {"moving_mean": self.moving_mean, "moving_variance": self.moving_variance}
        if self.gamma is not None:
            p["gamma"] = self.gamma
        if self.beta is not None:
            p["beta"] = self.beta
        return p

    def forward(self, x, state, new_state, keep):
        y = x * self._inv
        y += self._res
        return y


class NormalizationOp(_PerStepOp):
    """The Keras Normalization preprocessing layer: (x - mean) / max(sqrt(variance), eps), or with
    invert=True mean + x * max(sqrt(variance), eps). `epsilon` is keras.config.epsilon() at conversion."""

    kind = "normalization"

    def __init__(self, name, in_size, invert=False, epsilon=1e-7, mean=None, variance=None):
        super().__init__(name, in_size)
        self.invert, self.epsilon = bool(invert), float(epsilon)
        f = self.in_size
        self.mean = param_f32(mean, (f,), f"{name}: mean")
        self.variance = param_f32(variance, (f,), f"{name}: variance")
        self._m = column(self.mean)
        self._d = column(np.maximum(np.sqrt(self.variance), F32(self.epsilon)))

    def config(self):
        return {"kind": self.kind, "name": self.name, "invert": self.invert, "epsilon": self.epsilon}

    def params(self):
        return {"mean": self.mean, "variance": self.variance}

    def forward(self, x, state, new_state, keep):
        if self.invert:
            y = x * self._d
            y += self._m
            return y
        y = x - self._m
        y /= self._d
        return y


class UnitNormOp(_PerStepOp):
    """Keras UnitNormalization over the feature axis: x * min(rsqrt(sum(x^2)), 1 / 1e-12)."""

    kind = "unit_norm"
    _CAP = F32(1.0 / 1e-12)

    def config(self):
        return {"kind": self.kind, "name": self.name}

    def forward(self, x, state, new_state, keep):
        r = np.sqrt(np.square(x).sum(axis=0, keepdims=True))
        with np.errstate(divide="ignore"):
            np.divide(F32(1), r, out=r)
        np.minimum(r, self._CAP, out=r)
        return x * r


class RescalingOp(_PerStepOp):
    """Keras Rescaling: x * scale + offset (scale and offset per feature; scalars are broadcast)."""

    kind = "rescaling"

    def __init__(self, name, in_size, scale=None, offset=None):
        super().__init__(name, in_size)
        # (the Keras weight "offset" is kept as `shift`: `Op.offset` is this op's place in the state)
        self.scale = _vector(1.0 if scale is None else scale, self.in_size, f"{name}: scale")
        self.shift = _vector(0.0 if offset is None else offset, self.in_size, f"{name}: offset")
        self._s, self._o = column(self.scale), column(self.shift)

    def config(self):
        return {"kind": self.kind, "name": self.name}

    def params(self):
        return {"scale": self.scale, "offset": self.shift}

    def forward(self, x, state, new_state, keep):
        y = x * self._s
        y += self._o
        return y


class CausalConv1DOp(Op):
    """Keras Conv1D with padding="causal" (stride 1, groups 1): y_t = act(sum_k W_k^T x_{t-(K-1-k)d} + b).

    The state holds the last (K-1)*d inputs, oldest first, C_in rows each (zeros before the stream's
    first step, exactly Keras' causal left padding). One step: one matmul per tap (the K-1 older taps are
    contiguous row blocks of the state, the newest is x), and the buffer moves on by one input (one copy).
    A mask does not hold the buffer: Keras' Conv1D ignores (and drops) the mask.
    """

    kind = "conv1d_causal"
    ends_mask = True

    def __init__(self, name, in_size, filters, kernel_size, dilation_rate=1, activation="linear",
                 use_bias=True, kernel=None, bias=None):
        super().__init__(name, in_size)
        self.filters = self.out_size = int(filters)
        self.kernel_size, self.dilation_rate = int(kernel_size), int(dilation_rate)
        if self.kernel_size < 1 or self.dilation_rate < 1:
            raise ModelError(f"{name}: kernel_size and dilation_rate must be >= 1")
        self.activation = Activation(activation)
        self.use_bias = bool(use_bias)
        k, c, d = self.kernel_size, self.in_size, self.dilation_rate
        self.kernel = param_f32(kernel, (k, c, self.filters), f"{name}: kernel")
        self.bias = param_f32(bias, (self.filters,), f"{name}: bias") if self.use_bias else None
        self.history = (k - 1) * d  # inputs kept in the state
        self.state_blocks = (("window", self.history * c),) if self.history else ()
        self._w_new = np.ascontiguousarray(self.kernel[-1].T)  # (filters, C_in): the tap on this step's x
        if d == 1:  # the older taps are the whole window: one matmul over it
            self._w_old = [np.ascontiguousarray(self.kernel[:-1].reshape((k - 1) * c, self.filters).T)]
            self._taps = [(0, self.history * c)] if self.history else []
        else:  # one matmul per older tap, each a contiguous block of rows of the window
            self._w_old = [np.ascontiguousarray(self.kernel[i].T) for i in range(k - 1)]
            self._taps = [(i * d * c, (i * d + 1) * c) for i in range(k - 1)]
        self._b = column(self.bias)

    def config(self):
        return {"kind": self.kind, "name": self.name, "filters": self.filters,
                "kernel_size": self.kernel_size, "dilation_rate": self.dilation_rate,
                "activation": self.activation.spec, "use_bias": self.use_bias}

    def params(self):
        return {"kernel": self.kernel, **({"bias": self.bias} if self.use_bias else {})}

    def forward(self, x, state, new_state, keep):
        y = np.dot(self._w_new, x)
        if self.history:
            s, c, n = self.offset, self.in_size, self.history * self.in_size
            for w, (a, b) in zip(self._w_old, self._taps):
                y += np.dot(w, state[s + a:s + b])
            new_state[s:s + n - c] = state[s + c:s + n]
            new_state[s + n - c:s + n] = x
        if self._b is not None:
            y += self._b
        if not self.activation.is_linear:
            self.activation.apply_t(y, y)
        return y


class GlobalAvgPoolOp(Op):
    """Keras GlobalAveragePooling1D, streamed: the mean over the steps seen so far.

    State: a running sum with its Kahan compensation (float32 sums of a long stream stay within
    float32 rounding of the exact mean instead of drifting with its length) and the count of steps,
    a float32 (exact up to 2**24 = 16.7 million steps per stream; beyond, it stops counting).
    With a mask, masked steps are left out of the sum and the count, as Keras does; before any
    unmasked step the mean is 0/0 = NaN, also as in Keras.
    """

    kind = "global_avg_pool"
    ends_mask = True

    def __init__(self, name, in_size):
        super().__init__(name, in_size)
        self.out_size = self.in_size
        self.state_blocks = (("sum", self.in_size), ("compensation", self.in_size), ("count", 1))

    def config(self):
        return {"kind": self.kind, "name": self.name}

    def forward(self, x, state, new_state, keep):
        s, c = self.offset, self.in_size
        total, comp, count = state[s:s + c], state[s + c:s + 2 * c], state[s + 2 * c:s + 2 * c + 1]
        y = x - comp
        t = total + y
        new_comp = new_state[s + c:s + 2 * c]
        np.subtract(t, total, out=new_comp)
        new_comp -= y
        new_state[s:s + c] = t
        np.add(count, F32(1), out=new_state[s + 2 * c:s + 2 * c + 1])
        if keep is not None:
            drop = ~keep
            rows = slice(s, s + 2 * c + 1)
            new_state[rows, drop] = state[rows, drop]
        with np.errstate(invalid="ignore", divide="ignore"):
            return new_state[s:s + c] / new_state[s + 2 * c:s + 2 * c + 1]


class GlobalMaxPoolOp(Op):
    """Keras GlobalMaxPooling1D, streamed: the running max of the steps seen so far.

    State: the max and a flag set after the first step. Keras' GlobalMaxPooling1D ignores a mask
    (masked steps count), so this op does too.
    """

    kind = "global_max_pool"
    ends_mask = True

    def __init__(self, name, in_size):
        super().__init__(name, in_size)
        self.out_size = self.in_size
        self.state_blocks = (("max", self.in_size), ("seen", 1))

    def config(self):
        return {"kind": self.kind, "name": self.name}

    def forward(self, x, state, new_state, keep):
        s, c = self.offset, self.in_size
        m = np.maximum(state[s:s + c], x)
        first = state[s + c] == 0
        if first.any():
            m[:, first] = x[:, first]
        new_state[s:s + c] = m
        new_state[s + c] = 1
        return m


OPS = {**_BASE_OPS, **{cls.kind: cls for cls in (
    EmbeddingOp, LayerNormOp, RMSNormOp, BatchNormOp, NormalizationOp, UnitNormOp, RescalingOp,
    CausalConv1DOp, GlobalAvgPoolOp, GlobalMaxPoolOp)}}


def build_op(config: dict, in_size: int, params: dict) -> Op:
    """Build an op from its step_model.json entry and its weights (Keras layout)."""
    cfg = dict(config)
    kind = cfg.pop("kind", None)
    cls = OPS.get(kind)
    if cls is None:
        raise ModelError(f"unknown layer kind {kind!r} in step model spec; known: {', '.join(OPS)}")
    try:
        return cls(in_size=in_size, **cfg, **params)
    except TypeError as exc:
        raise ModelError(f"bad {kind} layer entry {config!r}: {exc}") from None
