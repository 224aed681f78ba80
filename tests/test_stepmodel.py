"""StepModel on its own (no Keras): cell maths against plain reference formulas, masking,
purity, batching, save/load and version hashing. Keras parity lives in test_parity.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.errors import DataError, ModelError
from models.kernels import SUPPORTED_ACTIVATIONS, Activation
from models.stepmodel import SPEC_FILE, WEIGHTS_FILE, StepModel

RNG = np.random.default_rng(1234)


def sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def rand(*shape, scale=0.5):
    return (RNG.normal(size=shape) * scale).astype(np.float32)


def ref_lstm(x, h, c, k, rk, b):
    z = x @ k + h @ rk + b
    i, f, g, o = np.split(z, 4, axis=-1)
    c = sig(f) * c + sig(i) * np.tanh(g)
    return sig(o) * np.tanh(c), c


def ref_gru(x, h, k, rk, b, reset_after):
    u = h.shape[-1]
    if reset_after:
        xz = x @ k + b[0]
        hz = h @ rk + b[1]
        z = sig(xz[:, :u] + hz[:, :u])
        r = sig(xz[:, u:2 * u] + hz[:, u:2 * u])
        hh = np.tanh(xz[:, 2 * u:] + r * hz[:, 2 * u:])
    else:
        xz = x @ k + b
        z = sig(xz[:, :u] + h @ rk[:, :u])
        r = sig(xz[:, u:2 * u] + h @ rk[:, u:2 * u])
        hh = np.tanh(xz[:, 2 * u:] + (r * h) @ rk[:, 2 * u:])
    return z * h + (1 - z) * hh


def make_stack(mask_value=None):
    """LSTM(6) -> GRU(4, reset_after) -> GRU(3, v1) -> SimpleRNN(3) -> Dense(2, sigmoid)."""
    f = 3
    layers = [
        {"kind": "lstm", "name": "lstm", "units": 6, "activation": "tanh",
         "recurrent_activation": "sigmoid", "use_bias": True},
        {"kind": "gru", "name": "gru", "units": 4, "activation": "tanh",
         "recurrent_activation": "sigmoid", "use_bias": True, "reset_after": True},
        {"kind": "gru", "name": "gru_v1", "units": 3, "activation": "tanh",
         "recurrent_activation": "sigmoid", "use_bias": True, "reset_after": False},
        {"kind": "simple_rnn", "name": "rnn", "units": 3, "activation": "tanh", "use_bias": True},
        {"kind": "dense", "name": "out", "units": 2, "activation": "sigmoid", "use_bias": True},
    ]
    w = {
        "0.kernel": rand(f, 24), "0.recurrent_kernel": rand(6, 24), "0.bias": rand(24),
        "1.kernel": rand(6, 12), "1.recurrent_kernel": rand(4, 12), "1.bias": rand(2, 12),
        "2.kernel": rand(4, 9), "2.recurrent_kernel": rand(3, 9), "2.bias": rand(9),
        "3.kernel": rand(3, 3), "3.recurrent_kernel": rand(3, 3), "3.bias": rand(3),
        "4.kernel": rand(3, 2), "4.bias": rand(2),
    }
    return StepModel(layers, w, f, mask_value=mask_value), w


def ref_stack(w, xs):
    """Reference forward over a (T, F) sequence with the plain formulas, float64."""
    w = {k: v.astype(np.float64) for k, v in w.items()}
    h0 = c0 = np.zeros((1, 6))
    h1 = np.zeros((1, 4))
    h2 = np.zeros((1, 3))
    h3 = np.zeros((1, 3))
    out = []
    for x in xs.astype(np.float64):
        x = x[None]
        h0, c0 = ref_lstm(x, h0, c0, w["0.kernel"], w["0.recurrent_kernel"], w["0.bias"])
        h1 = ref_gru(h0, h1, w["1.kernel"], w["1.recurrent_kernel"], w["1.bias"], True)
        h2 = ref_gru(h1, h2, w["2.kernel"], w["2.recurrent_kernel"], w["2.bias"], False)
        h3 = np.tanh(h2 @ w["3.kernel"] + h3 @ w["3.recurrent_kernel"] + w["3.bias"])
        out.append(sig(h3 @ w["4.kernel"] + w["4.bias"])[0])
    return np.array(out)


def test_stack_matches_reference_formulas():
    model, w = make_stack()
    assert model.state_size == 6 + 6 + 4 + 3 + 3
    assert model.state_layout == [("lstm/h", 6), ("lstm/c", 6), ("gru/h", 4), ("gru_v1/h", 3),
                                  ("rnn/h", 3)]
    assert (model.feature_size, model.output_size) == (3, 2)
    xs = rand(50, 3, scale=1.0)
    ys, final = model.run(xs)
    assert ys.dtype == np.float32 and ys.shape == (50, 2) and final.shape == (22,)
    np.testing.assert_allclose(ys, ref_stack(w, xs), atol=1e-5)


def test_step_is_pure_and_batch_equals_alone():
    model, _ = make_stack()
    xs = rand(4, 20, 3, scale=1.0)
    state = model.initial_state(4)
    assert state.shape == (4, model.state_size) and state.dtype == np.float32 and not state.any()
    for t in range(20):
        x = xs[:, t].copy()
        x_before, s_before = x.copy(), state.copy()
        y, new = model.step(x, state)
        assert np.array_equal(x, x_before) and np.array_equal(state, s_before)
        assert new is not state
        state = new
    ys_batch, _ = model.run(xs)
    for b in range(4):
        ys_alone, _ = model.run(xs[b])
        np.testing.assert_allclose(ys_batch[b], ys_alone, atol=1e-6)


def test_large_batches_in_row_blocks_give_the_same_results():
    model, _ = make_stack(mask_value=0.0)
    xs = rand(37, 6, 3, scale=1.0)
    xs[5, 2:4] = 0.0  # a masked stretch inside one block
    whole_y, whole_s = model.run(xs)
    state = model.initial_state(37)
    y1, s1 = model.step(xs[:, 0], state)
    model.chunk_rows = 8  # instance override: 5 blocks, the last one partial
    assert model.chunk_rows == 8 and type(model).chunk_rows != 8
    ys, final = model.run(xs)
    np.testing.assert_allclose(ys, whole_y, atol=1e-6)
    np.testing.assert_allclose(final, whole_s, atol=1e-6)
    y2, s2 = model.step(xs[:, 0], state)
    np.testing.assert_allclose(y2, y1, atol=1e-6)
    np.testing.assert_allclose(s2, s1, atol=1e-6)
    assert not state.any()


def test_run_ragged_equals_stepping_each_sequence_for_its_own_length():
    """Sequences of different lengths in one call (the engine's polls): each sequence's outputs and final state
    are what `step` gives it timestep by timestep; masked steps, row blocks and a one-step sequence included."""
    model, _ = make_stack(mask_value=0.0)
    lengths = np.array([9, 9, 7, 4, 4, 4, 2, 1, 1])
    xs = rand(len(lengths), 11, 3, scale=1.0)
    xs[1, 3:5] = 0.0  # a masked stretch
    state = rand(len(lengths), model.state_size)
    for block in (512, 4):  # the last one: three row blocks, each with its own longest sequence
        model.chunk_rows = block
        ys, final = model.run_ragged(xs, lengths, state)
        assert ys.shape == (len(lengths), 11, 2) and final.shape == state.shape
        for b, n in enumerate(lengths):
            s = state[b:b + 1]
            for t in range(n):
                y, s = model.step(xs[b:b + 1, t], s)
                np.testing.assert_allclose(ys[b, t], y[0], atol=1e-6)
            np.testing.assert_allclose(final[b], s[0], atol=1e-6)
            assert not ys[b, n:].any()
    assert not model.run_ragged(xs[:0], lengths[:0], state[:0])[0].size


def test_run_ragged_refuses_unsorted_or_empty_lengths():
    model, _ = make_stack()
    xs, state = rand(3, 4, 3), model.initial_state(3)
    for lengths in ([2, 3, 1], [4, 2, 0], [5, 1, 1]):
        with pytest.raises(DataError, match="non-increasing"):
            model.run_ragged(xs, lengths, state)
    with pytest.raises(DataError, match="run_ragged takes"):
        model.run_ragged(xs, [4, 2], state)


def test_output_is_not_a_view_of_state():
    layers = [{"kind": "simple_rnn", "name": "r", "units": 2, "activation": "tanh", "use_bias": False}]
    model = StepModel(layers, {"0.kernel": rand(2, 2), "0.recurrent_kernel": rand(2, 2)}, 2)
    y, state = model.step(np.ones((1, 2), np.float32), model.initial_state(1))
    before = state.copy()
    y += 100
    assert np.array_equal(state, before)


def test_masked_rows_keep_state_and_repeat_output():
    model, _ = make_stack(mask_value=0.0)
    assert model.mask_value == 0.0
    xs = rand(2, 10, 3, scale=1.0)
    ys, state = model.run(xs)
    x = np.stack([np.zeros(3, np.float32), rand(3)])  # row 0 masked, row 1 real
    y, new = model.step(x, state)
    assert np.array_equal(new[0], state[0])  # state kept exactly
    # the output is what the model gives for the previous hidden state: same as the last output
    np.testing.assert_allclose(y[0], ys[0, -1], atol=1e-6)
    assert not np.array_equal(new[1], state[1])
    # the unmasked row is unaffected by its masked neighbour
    y1, new1 = model.step(x[1:], state[1:])
    np.testing.assert_allclose(y[1], y1[0], atol=1e-6)
    np.testing.assert_allclose(new[1], new1[0], atol=1e-6)


def test_bad_shapes_are_data_errors():
    model, _ = make_stack()
    with pytest.raises(DataError, match="expected \\(batch, 3\\)"):
        model.step(np.zeros((1, 4), np.float32), model.initial_state(1))
    with pytest.raises(DataError, match="state has shape"):
        model.step(np.zeros((2, 3), np.float32), model.initial_state(1))
    with pytest.raises(DataError):
        model.run(np.zeros((5, 2), np.float32))


def test_float64_input_is_accepted():
    model, _ = make_stack()
    y, s = model.step(np.ones((1, 3)), model.initial_state(1).astype(np.float64))
    assert y.dtype == np.float32 and s.dtype == np.float32


def test_save_load_roundtrip_and_version(tmp_path):
    model, w = make_stack(mask_value=-1.0)
    model.save(tmp_path / "m")
    spec = json.loads((tmp_path / "m" / SPEC_FILE).read_text())
    assert spec["version"] == model.version and len(model.version) == 16
    assert spec["state_layout"][0] == ["lstm/h", 6]
    loaded = StepModel.load(tmp_path / "m")
    assert loaded.version == model.version and loaded.mask_value == -1.0
    xs = rand(15, 3)
    np.testing.assert_array_equal(loaded.run(xs)[0], model.run(xs)[0])
    assert loaded.describe()["layers"] == model.describe()["layers"]
    # any weight change changes the version
    w2 = dict(w)
    w2["4.bias"] = w["4.bias"] + np.float32(1e-3)
    other = StepModel(model.layers, w2, 3, mask_value=-1.0)
    assert other.version != model.version
    # ... and so does a spec change
    assert StepModel(model.layers, w, 3, mask_value=None).version != model.version


def test_load_refuses_tampered_or_missing(tmp_path):
    with pytest.raises(ModelError, match="not a step model directory"):
        StepModel.load(tmp_path)
    model, w = make_stack()
    model.save(tmp_path)
    w = dict(w)
    w["0.bias"] = w["0.bias"] * 2
    np.savez(tmp_path / WEIGHTS_FILE, **w)
    with pytest.raises(ModelError, match="do not match"):
        StepModel.load(tmp_path)
    (tmp_path / SPEC_FILE).write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        StepModel.load(tmp_path)


def test_inconsistent_weights_are_refused():
    layers = [{"kind": "dense", "name": "d", "units": 2, "activation": "linear", "use_bias": True}]
    with pytest.raises(ModelError, match="kernel has shape"):
        StepModel(layers, {"0.kernel": rand(4, 2), "0.bias": rand(2)}, 3)
    with pytest.raises(ModelError, match="unsupported activation"):
        StepModel([dict(layers[0], activation="no_such")], {"0.kernel": rand(3, 2), "0.bias": rand(2)}, 3)
    with pytest.raises(ModelError, match="weights without a layer"):
        StepModel(layers, {"0.kernel": rand(3, 2), "0.bias": rand(2), "5.kernel": rand(1)}, 3)


REF_ACT = {
    "linear": lambda x: x,
    "relu": lambda x: np.maximum(x, 0),
    "relu6": lambda x: np.clip(x, 0, 6),
    "sigmoid": sig,
    "tanh": np.tanh,
    "hard_sigmoid": lambda x: np.clip(x + 3, 0, 6) / 6,
    "hard_silu": lambda x: x * np.clip(x + 3, 0, 6) / 6,
    "hard_swish": lambda x: x * np.clip(x + 3, 0, 6) / 6,
    "hard_tanh": lambda x: np.clip(x, -1, 1),
    "exponential": np.exp,
    "elu": lambda x: np.where(x > 0, x, np.expm1(x)),
    "selu": lambda x: 1.0507009873554805 * np.where(x > 0, x, 1.6732632423543772 * np.expm1(x)),
    "celu": lambda x: np.maximum(x, 0) + np.expm1(np.minimum(x, 0)),
    "softplus": lambda x: np.log1p(np.exp(x)),
    "softsign": lambda x: x / (1 + np.abs(x)),
    "silu": lambda x: x * sig(x),
    "swish": lambda x: x * sig(x),
    "gelu": lambda x: 0.5 * x * (1 + np.vectorize(__import__("math").erf)(x / np.sqrt(2))),
    "mish": lambda x: x * np.tanh(np.log1p(np.exp(x))),
    "log_sigmoid": lambda x: np.log(sig(x)),
    "tanh_shrink": lambda x: x - np.tanh(x),
    "sparse_sigmoid": lambda x: np.clip(0.5 * (x + 1), 0, 1),
    "sparse_plus": lambda x: np.where(x <= -1, 0, np.where(x < 1, 0.25 * (x + 1) ** 2, x)),
    "squareplus": lambda x: (x + np.sqrt(x * x + 4)) / 2,
    "leaky_relu": lambda x: np.where(x >= 0, x, 0.2 * x),
    "hard_shrink": lambda x: np.where(np.abs(x) > 0.5, x, 0),
    "soft_shrink": lambda x: np.where(x > 0.5, x - 0.5, np.where(x < -0.5, x + 0.5, 0)),
    "softmax": lambda x: np.exp(x - x.max(-1, keepdims=True)) / np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True),
    "log_softmax": lambda x: x - x.max(-1, keepdims=True) - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)),
}


@pytest.mark.parametrize("name", SUPPORTED_ACTIVATIONS)
def test_activation_formulas(name):
    x = np.linspace(-6, 6, 97, dtype=np.float32).reshape(1, -1)
    want = REF_ACT[name](x.astype(np.float64))
    got = Activation(name)(x.copy())
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)


# --------------------------------------------------------------------------- input kinds, many-to-one, new ops


def _old_version(spec: dict, weights: dict) -> str:
    """The version hash as computed before input_kind/many_to_one existed (the three core fields)."""
    import hashlib

    h = hashlib.sha256()
    core = {k: spec[k] for k in ("feature_size", "mask_value", "layers")}
    h.update(json.dumps(core, sort_keys=True, separators=(",", ":")).encode())
    for key in sorted(weights):
        a = np.ascontiguousarray(weights[key], dtype=np.float32)
        h.update(f"|{key}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def test_float_models_keep_their_version_and_old_specs_load(tmp_path):
    model, _ = make_stack(0.0)
    assert model.version == _old_version(model.spec(), model.weights())
    assert (model.input_kind, model.vocab_size, model.many_to_one) == ("float", None, False)
    model.save(tmp_path)
    spec = json.loads((tmp_path / SPEC_FILE).read_text())
    for key in ("input_kind", "many_to_one", "vocab_size"):  # a directory converted before these existed
        spec.pop(key, None)
    (tmp_path / SPEC_FILE).write_text(json.dumps(spec))
    again = StepModel.load(tmp_path)
    assert again.version == model.version and again.input_kind == "float" and not again.many_to_one


def _token_model(many_to_one=False, vocab=10):
    layers = [{"kind": "embedding", "name": "emb", "input_dim": vocab, "output_dim": 4},
              {"kind": "gru", "name": "gru", "units": 3, "activation": "tanh", "recurrent_activation": "sigmoid",
               "use_bias": True, "reset_after": True},
              {"kind": "global_avg_pool", "name": "gap"},
              {"kind": "dense", "name": "out", "units": 2, "activation": "softmax", "use_bias": True}]
    weights = {"0.embeddings": rand(vocab, 4), "1.kernel": rand(4, 9), "1.recurrent_kernel": rand(3, 9),
               "1.bias": rand(2, 9), "3.kernel": rand(3, 2), "3.bias": rand(2)}
    return StepModel(layers, weights, 1, 0.0, many_to_one=many_to_one)


def test_token_model_spec_and_versions(tmp_path):
    model = _token_model(many_to_one=True)
    assert (model.input_kind, model.vocab_size, model.feature_size, model.many_to_one) == ("tokens", 10, 1, True)
    assert _token_model(many_to_one=False).version != model.version  # many_to_one is behaviour: hashed
    model.save(tmp_path)
    spec = json.loads((tmp_path / SPEC_FILE).read_text())
    assert (spec["input_kind"], spec["vocab_size"], spec["many_to_one"]) == ("tokens", 10, True)
    assert model.describe()["input_kind"] == "tokens" and model.describe()["many_to_one"] is True
    assert StepModel.load(tmp_path).version == model.version
    spec["many_to_one"] = False  # edited: the version no longer matches
    (tmp_path / SPEC_FILE).write_text(json.dumps(spec))
    with pytest.raises(ModelError, match="version"):
        StepModel.load(tmp_path)
    spec["many_to_one"], spec["input_kind"] = True, "float"
    (tmp_path / SPEC_FILE).write_text(json.dumps(spec))
    with pytest.raises(ModelError, match="input_kind 'float' does not match"):
        StepModel.load(tmp_path)
    spec["input_kind"], spec["many_to_one"] = "tokens", "yes"
    (tmp_path / SPEC_FILE).write_text(json.dumps(spec))
    with pytest.raises(ModelError, match="'many_to_one' must be true or false"):
        StepModel.load(tmp_path)


def test_token_ids_run_and_bad_ids_are_data_errors():
    model = _token_model()
    ids = np.array([3, 0, 0, 9, 1])
    ys, state = model.run(ids)
    batched, _ = model.run(np.stack([ids, ids]))
    np.testing.assert_allclose(batched[0], ys, atol=1e-6)
    assert np.isnan(model.run(np.array([0]))[0]).all()  # the mean over no unmasked step: 0/0, as in Keras
    assert state[-1] == 3  # the pooled count: masked (id 0) steps left out
    for bad in (10.0, -1.0, 2.5, np.nan):
        with pytest.raises(DataError, match="token id"):
            model.step(np.array([[1.0], [bad]], np.float32), model.initial_state(2))


def test_an_embedding_must_come_first():
    layers = [{"kind": "dense", "name": "d", "units": 1, "activation": "linear", "use_bias": False},
              {"kind": "embedding", "name": "emb", "input_dim": 5, "output_dim": 2}]
    with pytest.raises(ModelError, match="'emb' is an embedding after the first layer"):
        StepModel(layers, {"0.kernel": rand(3, 1), "1.embeddings": rand(5, 2)}, 3)
    with pytest.raises(ModelError, match="input size 1"):
        StepModel(layers[1:], {"0.embeddings": rand(5, 2)}, 3)
