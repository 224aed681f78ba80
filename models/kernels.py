"""Numpy kernels of the streaming step model: activations and one-timestep layer ops.

Every op works on one timestep of 2-D float32 arrays, feature-major `(features, batch)` (see
the note above the ops). Recurrent ops read their previous state from a block of the flat
input state and write the next state into the same block of a fresh output state, so a whole
model step allocates little beyond the gate pre-activations.

Weights are kept in the Keras layout (`layer.get_weights()` order and gate order) in `params`;
each op derives fused/reordered copies for the hot loop once, at construction.
"""

from __future__ import annotations

import math

import numpy as np

from models.errors import ModelError

F32 = np.float32

# --------------------------------------------------------------------------------------------
# Activations. Each is `fn(x, out) -> out`; `out` may be `x` itself (in place) or a new array.
# They reproduce the Keras 3 (TensorFlow backend) definitions in float32.
# --------------------------------------------------------------------------------------------


def _linear(x, out):
    if out is not x:
        out[...] = x
    return out


def _relu(x, out):
    return np.maximum(x, F32(0), out=out)


def _relu6(x, out):
    return np.clip(x, F32(0), F32(6), out=out)


def _sigmoid(x, out):
    # 0.5 * (1 + tanh(x / 2)): exact sigmoid, no overflow warnings for large |x|.
    np.multiply(x, F32(0.5), out=out)
    np.tanh(out, out=out)
    out *= F32(0.5)
    out += F32(0.5)
    return out


def _tanh(x, out):
    return np.tanh(x, out=out)


def _hard_sigmoid(x, out):
    # Keras 3: relu6(x + 3) / 6 (Keras 2 used 0.2 * x + 0.5).
    np.add(x, F32(3), out=out)
    np.clip(out, F32(0), F32(6), out=out)
    out /= F32(6)
    return out


def _hard_silu(x, out):
    tmp = _hard_sigmoid(x, np.empty_like(x))
    return np.multiply(x, tmp, out=out)


def _hard_tanh(x, out):
    return np.clip(x, F32(-1), F32(1), out=out)


def _exponential(x, out):
    with np.errstate(over="ignore"):
        return np.exp(x, out=out)


def _elu_alpha(alpha):
    alpha = F32(alpha)

    def elu(x, out):
        neg = np.minimum(x, F32(0))
        with np.errstate(over="ignore"):
            np.expm1(neg, out=neg)
        if alpha != 1:
            neg *= alpha
        return _assign(out, np.where(x > 0, x, neg))

    return elu


def _assign(out, value):
    out[...] = value
    return out


_SELU_ALPHA = F32(1.6732632423543772848170429916717)
_SELU_SCALE = F32(1.0507009873554804934193349852946)


def _selu(x, out):
    neg = np.minimum(x, F32(0))
    np.expm1(neg, out=neg)
    neg *= _SELU_ALPHA
    res = np.where(x > 0, x, neg)
    res *= _SELU_SCALE
    return _assign(out, res)


def _celu_alpha(alpha):
    alpha = F32(alpha)

    def celu(x, out):
        neg = np.minimum(x, F32(0))
        neg /= alpha
        np.expm1(neg, out=neg)
        neg *= alpha
        pos = np.maximum(x, F32(0))
        return np.add(pos, neg, out=out)

    return celu


def _softplus(x, out):
    # log(1 + exp(x)) computed stably: max(x, 0) + log1p(exp(-|x|)).
    t = np.abs(x)
    np.negative(t, out=t)
    np.exp(t, out=t)
    np.log1p(t, out=t)
    return np.add(np.maximum(x, F32(0)), t, out=out)


def _softsign(x, out):
    d = np.abs(x)
    d += F32(1)
    return np.divide(x, d, out=out)


def _silu(x, out):
    s = _sigmoid(x, np.empty_like(x))
    return np.multiply(x, s, out=out)


def _mish(x, out):
    t = _softplus(x, np.empty_like(x))
    np.tanh(t, out=t)
    return np.multiply(x, t, out=out)


def _log_sigmoid(x, out):
    # -softplus(-x)
    t = _softplus(np.negative(x), np.empty_like(x))
    return np.negative(t, out=out)


def _tanh_shrink(x, out):
    t = np.tanh(x)
    return np.subtract(x, t, out=out)


def _softmax(x, out):
    m = np.max(x, axis=-1, keepdims=True)
    np.subtract(x, m, out=out)
    np.exp(out, out=out)
    out /= np.sum(out, axis=-1, keepdims=True)
    return out


def _log_softmax(x, out):
    m = np.max(x, axis=-1, keepdims=True)
    np.subtract(x, m, out=out)
    lse = np.log(np.sum(np.exp(out), axis=-1, keepdims=True))
    out -= lse
    return out


def _sparse_sigmoid(x, out):
    return _assign(out, np.clip(F32(0.5) * (x + F32(1)), F32(0), F32(1)))


def _sparse_plus(x, out):
    mid = F32(0.25) * np.square(x + F32(1))
    res = np.where(x <= -1, F32(0), np.where(x < 1, mid, x))
    return _assign(out, res.astype(F32, copy=False))


def _squareplus_b(b):
    b = F32(b)

    def squareplus(x, out):
        res = (x + np.sqrt(np.square(x) + b)) / F32(2)
        return _assign(out, res)

    return squareplus


def _shrink(kind, threshold):
    th = F32(threshold)

    def hard_shrink(x, out):
        return _assign(out, np.where(np.abs(x) > th, x, F32(0)))

    def soft_shrink(x, out):
        return _assign(out, np.where(x > th, x - th, np.where(x < -th, x + th, F32(0))))

    return hard_shrink if kind == "hard_shrink" else soft_shrink


def _erf(x):
    """erf in float64 (Numerical Recipes erfc rational approximation, |error| < 1.2e-7)."""
    z = np.abs(x).astype(np.float64)
    t = 1.0 / (1.0 + 0.5 * z)
    y = 1.0 - t * np.exp(
        -z * z
        - 1.26551223
        + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806 + t * (
            0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))))
    )
    return np.where(x >= 0, y, -y)


def _gelu_approx(approximate):
    if approximate:
        c = math.sqrt(2.0 / math.pi)

        def gelu(x, out):
            x64 = x.astype(np.float64)
            res = 0.5 * x64 * (1.0 + np.tanh(c * (x64 + 0.044715 * x64 ** 3)))
            return _assign(out, res)

        return gelu

    def gelu(x, out):
        x64 = x.astype(np.float64)
        res = 0.5 * x64 * (1.0 + _erf(x64 / math.sqrt(2.0)))
        return _assign(out, res)

    return gelu


def _leaky_relu_slope(slope):
    slope = F32(slope)

    def leaky_relu(x, out):
        return _assign(out, np.where(x >= 0, x, x * slope))

    return leaky_relu


def _relu_general(negative_slope=0.0, max_value=None, threshold=0.0):
    """The Keras `relu(x, negative_slope, max_value, threshold)` / `ReLU` layer."""
    negative_slope = F32(negative_slope)
    threshold = F32(threshold)
    max_value = None if max_value is None else F32(max_value)
    if negative_slope == 0 and threshold == 0 and max_value is None:
        return _relu

    def relu(x, out):
        # keras.activations.relu: x where x > threshold (else 0), clipped at max_value,
        # minus negative_slope * relu(threshold - x).
        pos = np.where(x > threshold, x, F32(0)) if threshold != 0 else np.maximum(x, F32(0))
        if max_value is not None:
            pos = np.clip(pos, F32(0), max_value)
        if negative_slope != 0:
            pos = pos - negative_slope * np.maximum(threshold - x, F32(0))
        return _assign(out, pos)

    return relu


# Activations that act on each element independently (safe to fuse across RNN gates).
_SIMPLE = {
    "linear": _linear,
    "relu": _relu,
    "relu6": _relu6,
    "sigmoid": _sigmoid,
    "tanh": _tanh,
    "hard_sigmoid": _hard_sigmoid,
    "hard_silu": _hard_silu,
    "hard_swish": _hard_silu,
    "hard_tanh": _hard_tanh,
    "exponential": _exponential,
    "elu": _elu_alpha(1.0),
    "selu": _selu,
    "celu": _celu_alpha(1.0),
    "softplus": _softplus,
    "softsign": _softsign,
    "silu": _silu,
    "swish": _silu,
    "gelu": _gelu_approx(False),
    "mish": _mish,
    "log_sigmoid": _log_sigmoid,
    "tanh_shrink": _tanh_shrink,
    "sparse_sigmoid": _sparse_sigmoid,
    "sparse_plus": _sparse_plus,
    "squareplus": _squareplus_b(4),
    "leaky_relu": _leaky_relu_slope(0.2),
    "hard_shrink": _shrink("hard_shrink", 0.5),
    "soft_shrink": _shrink("soft_shrink", 0.5),
}
# Activations over the last axis (a row at a time).
_ROWWISE = {"softmax": _softmax, "log_softmax": _log_softmax}

SUPPORTED_ACTIVATIONS = tuple(sorted(set(_SIMPLE) | set(_ROWWISE)))


class Activation:
    """A named activation (optionally with parameters) resolved to a numpy kernel.

    `spec` is a name ("tanh") or a dict {"name": "relu", "max_value": 6.0, ...} as stored in
    step_model.json. `rowwise` is True for softmax-type activations, which act on each
    stream's whole feature vector rather than element by element.
    """

    __slots__ = ("spec", "fn", "rowwise", "is_linear")

    def __init__(self, spec):
        self.spec = spec
        name, params = (spec, {}) if isinstance(spec, str) else (spec.get("name"), dict(spec))
        params.pop("name", None)
        self.rowwise = False
        self.is_linear = name == "linear" and not params
        if not params and name in _SIMPLE:
            self.fn = _SIMPLE[name]
        elif not params and name in _ROWWISE:
            self.fn = _ROWWISE[name]
            self.rowwise = True
        elif name == "relu" and set(params) <= {"negative_slope", "max_value", "threshold"}:
            self.fn = _relu_general(**params)
        elif name == "leaky_relu" and set(params) <= {"negative_slope"}:
            self.fn = _leaky_relu_slope(params.get("negative_slope", 0.2))
        elif name == "elu" and set(params) <= {"alpha"}:
            self.fn = _elu_alpha(params.get("alpha", 1.0))
        elif name == "celu" and set(params) <= {"alpha"}:
            self.fn = _celu_alpha(params.get("alpha", 1.0))
        elif name == "gelu" and set(params) <= {"approximate"}:
            self.fn = _gelu_approx(bool(params.get("approximate", False)))
        elif name == "squareplus" and set(params) <= {"b"}:
            self.fn = _squareplus_b(params.get("b", 4))
        elif name in ("hard_shrink", "soft_shrink") and set(params) <= {"threshold"}:
            self.fn = _shrink(name, params.get("threshold", 0.5))
        else:
            raise ModelError(
                f"unsupported activation {spec!r}; supported: {', '.join(SUPPORTED_ACTIVATIONS)}"
            )

    def __call__(self, x, out=None):
        """Apply to batch-major x (batch, features); in place when out is None."""
        return self.fn(x, x if out is None else out)

    def apply_t(self, x, out):
        """Apply to feature-major x (features, batch), the layout the ops work in."""
        if self.rowwise:
            self.fn(x.T, out.T)
            return out
        return self.fn(x, out)


def apply_gates_t(act: Activation, z: np.ndarray, units: int) -> None:
    """Apply `act` in place to the feature-major gate block z (k*units, batch), gate by gate
    when the activation is row-wise (Keras applies it to each gate separately)."""
    if not act.rowwise:
        act.fn(z, z)
        return
    for k in range(z.shape[0] // units):
        g = z[k * units:(k + 1) * units]
        act.apply_t(g, g)


# --------------------------------------------------------------------------------------------
# Layer ops.
#
# Ops work feature-major: activations are (features, batch) and the state is (S, batch), so
# that each gate, each state block and each elementwise operand is one contiguous block of
# memory. (Batch-major slices such as state[:, a:b] are strided views, and numpy runs an
# elementwise op over them row by row: about 20 times slower at batch 4096.) StepModel
# transposes the caller's (batch, S) state in and out once per step.
# Weights are stored transposed for this: z = W^T @ [x; h].
# --------------------------------------------------------------------------------------------

_HALF = np.array(0.5, dtype=F32)  # 0-d array: numpy's cheapest scalar operand


def param_f32(a, shape, what):
    """A weight as a float32 array of the expected shape; ModelError naming `what` otherwise."""
    if a is None:
        raise ModelError(f"{what} is missing")
    a = np.asarray(a, dtype=F32)
    if a.shape != tuple(shape):
        raise ModelError(f"{what} has shape {a.shape}, expected {tuple(shape)}")
    return a


def column(b):
    """A per-row vector as a contiguous (n, 1) float32 column (None stays None): broadcasts over the batch."""
    return None if b is None else np.ascontiguousarray(np.asarray(b, dtype=F32).reshape(-1, 1))


def _sigmoid_by_tanh(z):
    """In place: z holds tanh(a / 2) (weights pre-scaled by 1/2); make it sigmoid(a)."""
    z *= _HALF
    z += _HALF


class Op:
    """One streaming layer. Subclasses set kind, in_size, out_size, state_blocks."""

    kind = "op"
    state_blocks: tuple = ()  # ((suffix, width), ...) in the order they sit in the flat state
    ends_mask = False  # True: Keras passes no sequence mask to the layers after this one
    offset = 0  # start of this op's state in the flat state vector (set by StepModel)

    def __init__(self, name: str, in_size: int):
        self.name = name
        self.in_size = int(in_size)

    @property
    def state_size(self) -> int:
        return sum(w for _, w in self.state_blocks)

    def config(self) -> dict:
        raise NotImplementedError

    def params(self) -> dict:
        return {}

    def forward(self, x, state, new_state, keep):
        """One timestep, feature-major: x (in_size, B), state/new_state (S, B) -> (out_size, B).

        Reads this op's block of `state`, writes the same block of `new_state`. `keep` is None
        or a (B,) bool array; columns where it is False are masked steps (state kept).
        """
        raise NotImplementedError


class DenseOp(Op):
    kind = "dense"

    def __init__(self, name, in_size, units, activation="linear", use_bias=True, kernel=None, bias=None):
        super().__init__(name, in_size)
        self.units = self.out_size = int(units)
        self.activation = Activation(activation)
        self.use_bias = bool(use_bias)
        self.kernel = param_f32(kernel, (self.in_size, self.units), f"{name}: kernel")
        self.bias = param_f32(bias, (self.units,), f"{name}: bias") if self.use_bias else None
        self._fast_sigmoid = activation == "sigmoid"
        scale = F32(0.5) if self._fast_sigmoid else F32(1)
        self._wt = np.ascontiguousarray(self.kernel.T * scale)
        self._b = column(None if self.bias is None else self.bias * scale)

    def config(self):
        return {"kind": self.kind, "name": self.name, "units": self.units,
                "activation": self.activation.spec, "use_bias": self.use_bias}

    def params(self):
        return {"kernel": self.kernel, **({"bias": self.bias} if self.use_bias else {})}

    def forward(self, x, state, new_state, keep):
        y = np.dot(self._wt, x)
        if self._b is not None:
            y += self._b
        if self._fast_sigmoid:
            np.tanh(y, out=y)
            _sigmoid_by_tanh(y)
        elif not self.activation.is_linear:
            self.activation.apply_t(y, y)
        return y


class ActivationOp(Op):
    kind = "activation"

    def __init__(self, name, in_size, activation):
        super().__init__(name, in_size)
        self.out_size = self.in_size
        self.activation = Activation(activation)

    def config(self):
        return {"kind": self.kind, "name": self.name, "activation": self.activation.spec}

    def forward(self, x, state, new_state, keep):
        if self.activation.is_linear:
            return x
        return self.activation.apply_t(x, np.empty_like(x))


class _RNNOp(Op):
    """Shared plumbing of the recurrent ops: weights in Keras layout, masking of kept columns."""

    gates = 1

    def __init__(self, name, in_size, units, activation, recurrent_activation, use_bias,
                 kernel, recurrent_kernel, bias, bias_shape=None, zero_output_for_mask=False):
        super().__init__(name, in_size)
        self.zero_output_for_mask = bool(zero_output_for_mask)
        self.units = self.out_size = int(units)
        self.activation = Activation(activation)
        self.recurrent_activation = Activation(recurrent_activation) if recurrent_activation else None
        self.use_bias = bool(use_bias)
        g = self.gates * self.units
        self.kernel = param_f32(kernel, (self.in_size, g), f"{name}: kernel")
        self.recurrent_kernel = param_f32(recurrent_kernel, (self.units, g), f"{name}: recurrent_kernel")
        self.bias = param_f32(bias, bias_shape or (g,), f"{name}: bias") if self.use_bias else None

    def config(self):
        cfg = {"kind": self.kind, "name": self.name, "units": self.units,
               "activation": self.activation.spec, "use_bias": self.use_bias}
        if self.recurrent_activation is not None:
            cfg["recurrent_activation"] = self.recurrent_activation.spec
        if self.zero_output_for_mask:  # only when set: keeps the spec (and version) of plain models
            cfg["zero_output_for_mask"] = True
        return cfg

    def params(self):
        p = {"kernel": self.kernel, "recurrent_kernel": self.recurrent_kernel}
        if self.use_bias:
            p["bias"] = self.bias
        return p

    def _finish(self, state, new_state, keep, h_new):
        """Masked columns (not in `keep`) keep their whole previous state; their output is the
        previous h (Keras 3 default) or zeros (zero_output_for_mask=True)."""
        if keep is None:
            return h_new
        drop = ~keep
        rows = slice(self.offset, self.offset + self.state_size)
        new_state[rows, drop] = state[rows, drop]
        return h_new * keep if self.zero_output_for_mask else h_new


def _is(act: Activation, name: str) -> bool:
    return act.spec == name


class LSTMOp(_RNNOp):
    """Keras LSTM cell, one fused matmul per step: z = W^T @ [x; h], W = [kernel; recurrent_kernel]
    with the gates reordered from Keras (i, f, c, o) to (i, f, o, c).

    Fast path (the Keras defaults, sigmoid gates and tanh cell): the i, f, o rows are pre-scaled
    by 1/2 (exact in floating point), so one tanh over the whole pre-activation block gives every
    gate: sigmoid(a) = 0.5 * tanh(a / 2) + 0.5.
    """

    kind = "lstm"
    gates = 4

    def __init__(self, name, in_size, units, activation="tanh", recurrent_activation="sigmoid",
                 use_bias=True, kernel=None, recurrent_kernel=None, bias=None, zero_output_for_mask=False):
        super().__init__(name, in_size, units, activation, recurrent_activation, use_bias,
                         kernel, recurrent_kernel, bias, zero_output_for_mask=zero_output_for_mask)
        u = self.units
        self.state_blocks = (("h", u), ("c", u))
        order = np.r_[0:2 * u, 3 * u:4 * u, 2 * u:3 * u]  # i f o c
        w = np.concatenate([self.kernel, self.recurrent_kernel], axis=0)[:, order]
        b = self.bias[order] if self.use_bias else None
        self._fast = _is(self.recurrent_activation, "sigmoid") and _is(self.activation, "tanh")
        if self._fast:
            w[:, :3 * u] *= F32(0.5)
            if b is not None:
                b[:3 * u] *= F32(0.5)
        self._wt = np.ascontiguousarray(w.T)
        self._b = column(b)

    def forward(self, x, state, new_state, keep):
        u, s = self.units, self.offset
        z = np.dot(self._wt, np.concatenate((x, state[s:s + u])))
        if self._b is not None:
            z += self._b
        g = z[3 * u:]
        if self._fast:
            np.tanh(z, out=z)
            _sigmoid_by_tanh(z[:3 * u])
        else:
            apply_gates_t(self.recurrent_activation, z[:3 * u], u)
            self.activation.apply_t(g, g)
        c_new = new_state[s + u:s + 2 * u]
        np.multiply(z[u:2 * u], state[s + u:s + 2 * u], out=c_new)  # f * c
        g *= z[:u]  # i * g
        c_new += g
        h_new = new_state[s:s + u]
        np.multiply(z[2 * u:3 * u], self.activation.apply_t(c_new, g), out=h_new)  # o * act(c)
        return self._finish(state, new_state, keep, h_new)


class GRUOp(_RNNOp):
    """Keras GRU cell (gate order z, r, h), reset_after True (v3/CuDNN style) or False (v1).

    reset_after=True runs one fused matmul, [[Wx_zr, Wx_h, 0], [Wh_zr, 0, Wh_h]]^T @ [x; h],
    giving the z/r pre-activations and the input and recurrent parts of the candidate one
    after another. reset_after=False needs a second, smaller matmul for Wh_h^T @ (r * h).
    With sigmoid gates the z/r rows are pre-scaled by 1/2 and sigmoid is 0.5 * tanh + 0.5.
    """

    kind = "gru"
    gates = 3

    def __init__(self, name, in_size, units, activation="tanh", recurrent_activation="sigmoid",
                 use_bias=True, reset_after=True, kernel=None, recurrent_kernel=None, bias=None,
                 zero_output_for_mask=False):
        self.reset_after = bool(reset_after)
        u = int(units)
        super().__init__(name, in_size, units, activation, recurrent_activation, use_bias,
                         kernel, recurrent_kernel, bias,
                         bias_shape=(2, 3 * u) if self.reset_after else (3 * u,),
                         zero_output_for_mask=zero_output_for_mask)
        self.state_blocks = (("h", u),)
        f = self.in_size
        k, rk = self.kernel, self.recurrent_kernel
        if self.reset_after:
            w = np.zeros((f + u, 4 * u), F32)
            w[:f, :3 * u] = k
            w[f:, :2 * u] = rk[:, :2 * u]
            w[f:, 3 * u:] = rk[:, 2 * u:]
            b = None
            if self.use_bias:
                b = np.concatenate([self.bias[0][:2 * u] + self.bias[1][:2 * u],
                                    self.bias[0][2 * u:], self.bias[1][2 * u:]])
            self._wh_ht = None
        else:
            w = np.zeros((f + u, 3 * u), F32)
            w[:f] = k
            w[f:, :2 * u] = rk[:, :2 * u]
            b = self.bias.copy() if self.use_bias else None
            self._wh_ht = np.ascontiguousarray(rk[:, 2 * u:].T)
        self._fast = _is(self.recurrent_activation, "sigmoid")
        if self._fast:
            w[:, :2 * u] *= F32(0.5)
            if b is not None:
                b[:2 * u] *= F32(0.5)
        self._wt = np.ascontiguousarray(w.T)
        self._b = column(b)

    def config(self):
        cfg = super().config()
        cfg["reset_after"] = self.reset_after
        return cfg

    def forward(self, x, state, new_state, keep):
        u, s = self.units, self.offset
        h = state[s:s + u]
        z = np.dot(self._wt, np.concatenate((x, h)))
        if self._b is not None:
            z += self._b
        zr = z[:2 * u]
        if self._fast:
            np.tanh(zr, out=zr)
            _sigmoid_by_tanh(zr)
        else:
            apply_gates_t(self.recurrent_activation, zr, u)
        hh = z[2 * u:3 * u]
        if self.reset_after:
            rh = z[3 * u:]
            rh *= zr[u:]
        else:
            rh = np.dot(self._wh_ht, zr[u:] * h)
        hh += rh
        self.activation.apply_t(hh, hh)
        h_new = new_state[s:s + u]
        # z * h + (1 - z) * hh  ==  hh + z * (h - hh)
        np.subtract(h, hh, out=h_new)
        h_new *= zr[:u]
        h_new += hh
        return self._finish(state, new_state, keep, h_new)


class SimpleRNNOp(_RNNOp):
    """Keras SimpleRNN cell: h = act([kernel; recurrent_kernel]^T @ [x; h] + b)."""

    kind = "simple_rnn"
    gates = 1

    def __init__(self, name, in_size, units, activation="tanh", use_bias=True,
                 kernel=None, recurrent_kernel=None, bias=None, zero_output_for_mask=False):
        super().__init__(name, in_size, units, activation, None, use_bias,
                         kernel, recurrent_kernel, bias, zero_output_for_mask=zero_output_for_mask)
        self.state_blocks = (("h", self.units),)
        self._wt = np.ascontiguousarray(np.concatenate([self.kernel, self.recurrent_kernel]).T)
        self._b = column(self.bias)

    def forward(self, x, state, new_state, keep):
        u, s = self.units, self.offset
        z = np.dot(self._wt, np.concatenate((x, state[s:s + u])))
        if self._b is not None:
            z += self._b
        h_new = new_state[s:s + u]
        self.activation.apply_t(z, h_new)
        return self._finish(state, new_state, keep, h_new)


# The ops of this module by kind; `models.layer_ops` adds the others and builds ops from specs.
OPS = {cls.kind: cls for cls in (DenseOp, ActivationOp, LSTMOp, GRUOp, SimpleRNNOp)}

