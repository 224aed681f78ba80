"""The streaming step model: a trained Keras RNN as a pure-numpy per-timestep function.

A `StepModel` is a chain of layer ops (see `models.kernels`) with an explicit, flat float32
state per stream. `step(x, state)` advances a batch of independent streams by one timestep;
feeding a sequence one step at a time from `initial_state` reproduces the Keras model's
full-sequence output at every step.

Input kinds (`input_kind`): "float", each step is `feature_size` numbers; or "tokens" (the model starts
with an Embedding), each step is one integer id from 0 to `vocab_size` - 1, passed to `step` as a
(B, 1) float32 column (exact below 2**24), `feature_size` 1.

`many_to_one`: the Keras model gives one output per sequence (a last RNN without return_sequences, or
a global pooling head). The step model still gives an output at every step: the Keras model's output on
the sequence so far, `model(x[:t+1])`; the output for the whole sequence is the one at its last step.

On disk a step model is two files in a directory:
  step_model.json  the spec: format, version, feature size, mask value, layer configs, input kind,
                   vocabulary size (token models), many_to_one
  step_model.npz   the weights, Keras layout, keys "<layer index>.<weight name>"
The version is a content hash of the spec and the weights, so it changes exactly when the
model's behaviour can change; `load` recomputes it and refuses a mismatch.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np

from models.errors import DataError, ModelError
from models.kernels import F32, Op
from models.layer_ops import build_op

FORMAT = "rnn-streamer/step-model"
FORMAT_VERSION = 1
SPEC_FILE = "step_model.json"
WEIGHTS_FILE = "step_model.npz"


def compute_version(spec: dict, weights: dict[str, np.ndarray]) -> str:
    """Content hash (16 hex chars) of the behavioural spec and the weights."""
    h = hashlib.sha256()
    core = {k: spec[k] for k in ("feature_size", "mask_value", "layers")}
    if spec.get("many_to_one"):  # only when set: plain models keep the version they always had
        core["many_to_one"] = True
    h.update(json.dumps(core, sort_keys=True, separators=(",", ":")).encode())
    for key in sorted(weights):
        a = np.ascontiguousarray(weights[key], dtype=F32)
        h.update(f"|{key}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


class StepModel:
    """A trained Keras RNN turned into a pure-numpy per-step function with explicit state."""

    # Batches larger than this are stepped in blocks of rows (cache-sized working sets):
    # about 1.5x more stream-steps/s at batch 4096 and up for the Q&A model. Any value gives the
    # same results.
    chunk_rows = 512

    def __init__(self, layers: list[dict], weights: dict[str, np.ndarray], feature_size: int,
                 mask_value: float | None = None, source: dict | None = None, *,
                 many_to_one: bool = False, input_kind: str | None = None):
        """Build from layer configs (step_model.json "layers") and weights keyed "<i>.<name>".

        The input kind follows from the layers (an "embedding" first: "tokens"); `input_kind`, when
        given, must agree. Raises ModelError when the configs and weights do not fit together.
        """
        if not isinstance(feature_size, int) or feature_size < 1:
            raise ModelError(f"feature_size must be a positive integer, got {feature_size!r}")
        if not layers:
            raise ModelError("a step model needs at least one layer")
        if mask_value is not None:
            mask_value = float(mask_value)
            if math.isnan(mask_value):
                raise ModelError("mask_value NaN can never match (NaN != NaN); use a number")
        self.feature_size = feature_size
        self.mask_value = mask_value
        self.source = dict(source or {})
        ops: list[Op] = []
        size = feature_size
        offset = 0
        used = set()
        for i, cfg in enumerate(layers):
            prefix = f"{i}."
            params = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
            used.update(prefix + k for k in params)
            try:
                op = build_op(cfg, size, params)
            except ModelError as exc:
                raise ModelError(f"layer {i} ({cfg.get('name', '?')}): {exc}") from None
            op.offset = offset
            offset += op.state_size
            size = op.out_size
            ops.append(op)
        extra = set(weights) - used
        if extra:
            raise ModelError(f"weights without a layer: {', '.join(sorted(extra))}")
        odd = [f"{i}.{k}" for i, op in enumerate(ops) for k, v in op.params().items() if type(v) is not np.ndarray]
        if odd:  # an op whose params() clash with an attribute set here (e.g. `offset`)
            raise ModelError(f"weights that are not arrays: {', '.join(odd)}")
        self.input_kind, self.vocab_size = _input_kind(ops, input_kind)
        self.many_to_one = bool(many_to_one)
        self._ops = tuple(ops)
        # Keras passes the sequence mask up to (and including) the first layer that drops or consumes it
        cut = next((i + 1 for i, op in enumerate(ops) if op.ends_mask), len(ops))
        self._masked_ops, self._unmasked_ops = self._ops[:cut], self._ops[cut:]
        self.output_size = size
        self.state_size = offset
        self.state_layout = [(f"{op.name}/{suffix}", w) for op in ops for suffix, w in op.state_blocks]
        self._mask = None if mask_value is None else F32(mask_value)
        self._y_in_state = bool(ops[-1].state_blocks)  # the last op returns a view of new_state
        self.version = compute_version(self._spec_core(), self.weights())

    # ---- spec -------------------------------------------------------------------------------
    def _spec_core(self) -> dict:
        core = {"feature_size": self.feature_size, "mask_value": self.mask_value,
                "layers": [op.config() for op in self._ops]}
        if self.many_to_one:
            core["many_to_one"] = True
        return core

    def weights(self) -> dict[str, np.ndarray]:
        """The weights in Keras layout, keyed "<layer index>.<name>" (what the .npz holds)."""
        return {f"{i}.{k}": v for i, op in enumerate(self._ops) for k, v in op.params().items()}

    @property
    def layers(self) -> list[dict]:
        return [op.config() for op in self._ops]

    def describe(self) -> dict:
        """Spec summary for manifests and metrics: layers, sizes, state layout, version."""
        return {
            "version": self.version,
            "input_kind": self.input_kind,
            "vocab_size": self.vocab_size,
            "feature_size": self.feature_size,
            "output_size": self.output_size,
            "many_to_one": self.many_to_one,
            "state_size": self.state_size,
            "mask_value": self.mask_value,
            "state_layout": [list(b) for b in self.state_layout],
            "layers": self.layers,
            "parameters": int(sum(v.size for v in self.weights().values())),
        }

    def __repr__(self) -> str:
        kinds = "->".join(f"{op.kind}({op.out_size})" for op in self._ops)
        given = f"tokens<{self.vocab_size}" if self.input_kind == "tokens" else f"features={self.feature_size}"
        return (f"StepModel(version={self.version}, {given}, {kinds}, state={self.state_size}"
                f"{', many_to_one' if self.many_to_one else ''})")

    # ---- stepping ---------------------------------------------------------------------------
    def initial_state(self, n: int) -> np.ndarray:
        """(n, S) float32 zeros: the state of n fresh streams."""
        return np.zeros((int(n), self.state_size), dtype=F32)

    def step(self, x: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Advance B streams by one timestep: x (B, F), state (B, S) -> (y (B, O), new_state (B, S)).

        Pure: the inputs are not modified and the outputs share no memory with them. With a mask
        value, a row whose features all equal it keeps its state and yields the output for its
        previous state (Keras 3 masking; an RNN built with zero_output_for_mask=True passes
        zeros downstream instead of its previous h). Token models take x (B, 1): the ids as float32;
        an id outside 0..vocab_size-1 (or not an integer) raises DataError.
        """
        if type(x) is not np.ndarray or x.dtype != F32:
            x = np.asarray(x, dtype=F32)
        if type(state) is not np.ndarray or state.dtype != F32:
            state = np.asarray(state, dtype=F32)
        if x.ndim != 2 or x.shape[1] != self.feature_size:
            raise DataError(f"step input has shape {x.shape}, expected (batch, {self.feature_size})")
        if state.shape != (x.shape[0], self.state_size):
            raise DataError(f"state has shape {state.shape}, expected ({x.shape[0]}, {self.state_size})")
        b, chunk = x.shape[0], self.chunk_rows
        if b <= chunk:
            # The ops work feature-major (see models.kernels): one transposition in, one out.
            y, new_state = self._step_t(x.T, np.ascontiguousarray(state.T))
            # (at batch 1 the transposes are views: copy y when it is a block of the new state)
            y = np.array(y.T) if self._y_in_state else np.ascontiguousarray(y.T)
            return y, np.ascontiguousarray(new_state.T)
        # Large batches go through in blocks of rows that keep each op's working set in cache.
        y = np.empty((b, self.output_size), dtype=F32)
        new_state = np.empty_like(state)
        for i in range(0, b, chunk):
            rows = slice(i, i + chunk)
            y_t, state_t = self._step_t(x[rows].T, np.ascontiguousarray(state[rows].T))
            y[rows] = y_t.T
            new_state[rows] = state_t.T
        return y, new_state

    def _step_t(self, x, state):
        """One step, feature-major: x (F, B), state (S, B) contiguous -> (y (O, B), new_state (S, B))."""
        new_state = np.empty_like(state)
        keep = None
        if self._mask is not None:
            keep = np.logical_or.reduce(x != self._mask, axis=0)
            if keep.all():
                keep = None
            else:
                x = x * keep  # Keras Masking zeroes masked steps
                for op in self._masked_ops:
                    x = op.forward(x, state, new_state, keep)
                for op in self._unmasked_ops:  # after a layer that drops the mask (e.g. Conv1D)
                    x = op.forward(x, state, new_state, None)
                return x, new_state
        for op in self._ops:
            x = op.forward(x, state, new_state, keep)
        return x, new_state

    def run(self, xs: np.ndarray, state: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Step through a sequence: xs (T, F) -> (ys (T, O), final state (S,)), or a batch of
        equal-length sequences xs (B, T, F) -> (ys (B, T, O), final states (B, S)).
        Token models take ids (T,) or (B, T) (or (B, T, 1)). Same arithmetic as calling `step` once
        per timestep; a many-to-one model's output for the whole sequence is ys[..., -1, :]."""
        xs = np.asarray(xs, dtype=F32)
        if self.input_kind == "tokens" and xs.ndim in (1, 2):
            xs = xs[..., None]
        single = xs.ndim == 2
        if single:
            xs = xs[None]
        if xs.ndim != 3 or xs.shape[2] != self.feature_size:
            raise DataError(f"run input has shape {xs.shape}, expected (T, {self.feature_size}) "
                            f"or (B, T, {self.feature_size})")
        b, t, _ = xs.shape
        if state is None:
            state = self.initial_state(b)
        state = np.asarray(state, dtype=F32).reshape(b, self.state_size) if single else \
            np.asarray(state, dtype=F32)
        if state.shape != (b, self.state_size):
            raise DataError(f"state has shape {state.shape}, expected ({b}, {self.state_size})")
        if b > self.chunk_rows:
            parts = [self.run(xs[i:i + self.chunk_rows], state[i:i + self.chunk_rows])
                     for i in range(0, b, self.chunk_rows)]
            ys, final = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
            return (ys[0], final[0]) if single else (ys, final)
        xs_t = np.ascontiguousarray(xs.transpose(1, 2, 0))  # (T, F, B)
        ys_t = np.empty((t, self.output_size, b), dtype=F32)
        state_t = np.ascontiguousarray(state.T)
        for i in range(t):
            ys_t[i], state_t = self._step_t(xs_t[i], state_t)
        ys = np.ascontiguousarray(ys_t.transpose(2, 0, 1))
        final = np.ascontiguousarray(state_t.T)
        if single:
            return ys[0], final[0]
        return ys, final

    def run_ragged(self, xs: np.ndarray, lengths, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Step a batch of sequences of different lengths: xs (B, T, F) holds sequence b in xs[b, :lengths[b]]
        (the rest is ignored), `lengths` (B,) non-increasing, T = lengths[0] >= 1, state (B, S). Returns
        ys (B, T, O), with ys[b, :lengths[b]] the outputs (zeros past a sequence's end), and each sequence's
        state after its last step (B, S).

        One `step` per timestep for the sequences still going, whose columns stay a prefix of the
        feature-major state (sorted by length): no gather or scatter between steps. Same arithmetic as
        calling `step` once per timestep on those sequences."""
        xs = np.asarray(xs, dtype=F32)
        lengths = np.asarray(lengths, dtype=np.int64)
        state = np.asarray(state, dtype=F32)
        b = xs.shape[0] if xs.ndim == 3 else -1
        if xs.ndim != 3 or xs.shape[2] != self.feature_size or lengths.shape != (b,) or \
                state.shape != (b, self.state_size):
            raise DataError(f"run_ragged takes xs (B, T, {self.feature_size}), lengths (B,) and state "
                            f"(B, {self.state_size}); got {xs.shape}, {lengths.shape} and {state.shape}")
        if b == 0:
            return np.empty((0, xs.shape[1], self.output_size), F32), np.empty((0, self.state_size), F32)
        t = int(lengths[0])
        if t < 1 or xs.shape[1] < t or lengths[-1] < 1 or (b > 1 and (np.diff(lengths) > 0).any()):
            raise DataError(f"run_ragged needs lengths from 1 to T={xs.shape[1]}, non-increasing; got {lengths}")
        if b > self.chunk_rows:  # blocks of rows, as `step` does: each block is a prefix of its own lengths
            parts = [self.run_ragged(xs[i:i + self.chunk_rows], lengths[i:i + self.chunk_rows],
                                     state[i:i + self.chunk_rows]) for i in range(0, b, self.chunk_rows)]
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        xs_t = np.ascontiguousarray(xs[:, :t].transpose(1, 2, 0))  # (t, F, B)
        ys_t = np.zeros((xs.shape[1], self.output_size, b), dtype=F32)
        final = np.empty((self.state_size, b), dtype=F32)
        state_t = np.ascontiguousarray(state.T)
        going = np.searchsorted(-lengths, -np.arange(t), side="left").tolist()  # sequences longer than i
        active = b
        for i, n in enumerate(going):
            if n < active:  # some sequences ended: keep their state, step the rest
                final[:, n:active] = state_t[:, n:active]
                state_t = np.ascontiguousarray(state_t[:, :n])
                active = n
            x = xs_t[i] if active == b else np.ascontiguousarray(xs_t[i, :, :active])
            ys_t[i, :, :active], state_t = self._step_t(x, state_t)
        final[:, :active] = state_t
        return np.ascontiguousarray(ys_t.transpose(2, 0, 1)), np.ascontiguousarray(final.T)

    # ---- persistence ------------------------------------------------------------------------
    def spec(self) -> dict:
        """The content of step_model.json."""
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "version": self.version,
                **self._spec_core(), "input_kind": self.input_kind,
                **({"vocab_size": self.vocab_size} if self.vocab_size is not None else {}),
                "many_to_one": self.many_to_one, "output_size": self.output_size,
                "state_size": self.state_size,
                "state_layout": [list(b) for b in self.state_layout],
                "source": self.source}

    def save(self, directory) -> None:
        """Write directory/step_model.json and directory/step_model.npz (created if needed)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tmp_npz = d / (WEIGHTS_FILE + ".tmp.npz")
        np.savez(tmp_npz, **self.weights())
        os.replace(tmp_npz, d / WEIGHTS_FILE)
        tmp_json = d / (SPEC_FILE + ".tmp")
        tmp_json.write_text(json.dumps(self.spec(), indent=2) + "\n")
        os.replace(tmp_json, d / SPEC_FILE)

    @classmethod
    def load(cls, directory) -> "StepModel":
        """Read a directory written by `save`; ModelError if missing, malformed or tampered with."""
        d = Path(directory)
        spec_path, npz_path = d / SPEC_FILE, d / WEIGHTS_FILE
        if not spec_path.is_file() or not npz_path.is_file():
            raise ModelError(f"{d} is not a step model directory: expected {SPEC_FILE} and "
                             f"{WEIGHTS_FILE}; create one with `streamer convert`")
        try:
            spec = json.loads(spec_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"{spec_path}: not valid JSON ({exc})") from None
        if not isinstance(spec, dict) or spec.get("format") != FORMAT:
            raise ModelError(f"{spec_path}: not a step model spec (format must be {FORMAT!r})")
        if spec.get("format_version") != FORMAT_VERSION:
            raise ModelError(f"{spec_path}: format_version {spec.get('format_version')!r} is not "
                             f"supported (this build reads {FORMAT_VERSION}); re-run `streamer convert`")
        try:
            with np.load(npz_path, allow_pickle=False) as npz:
                weights = {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as exc:
            raise ModelError(f"{npz_path}: cannot read weights ({exc})") from None
        try:
            model = cls(spec["layers"], weights, spec["feature_size"], spec.get("mask_value"),
                        source=spec.get("source"), many_to_one=_flag(spec, "many_to_one", spec_path),
                        input_kind=spec.get("input_kind"))
        except KeyError as exc:
            raise ModelError(f"{spec_path}: missing field {exc}") from None
        if spec.get("version") != model.version:
            raise ModelError(f"{d}: the weights do not match the spec's version "
                             f"({spec.get('version')!r} recorded, {model.version!r} computed); "
                             "the artifact is corrupted or was edited; re-run `streamer convert`")
        return model


INPUT_KINDS = ("float", "tokens")


def _input_kind(ops: list[Op], given: str | None) -> tuple[str, int | None]:
    """("tokens", vocabulary size) for a model that starts with an embedding, else ("float", None)."""
    later = [op.name for op in ops[1:] if op.kind == "embedding"]
    if later:
        raise ModelError(f"layer '{later[0]}' is an embedding after the first layer; an embedding reads "
                         "token ids, so it must come first")
    kind, vocab = ("tokens", ops[0].input_dim) if ops[0].kind == "embedding" else ("float", None)
    if given is not None and given != kind:
        raise ModelError(f"input_kind {given!r} does not match the layers, which take {kind!r} input "
                         f"(one of {', '.join(INPUT_KINDS)}; an embedding first means tokens)")
    return kind, vocab


def _flag(spec: dict, name: str, where) -> bool:
    value = spec.get(name, False)
    if type(value) is not bool:
        raise ModelError(f"{where}: {name!r} must be true or false, got {value!r}")
    return value
