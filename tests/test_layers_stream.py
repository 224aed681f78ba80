"""The layers beyond RNN/Dense stream exactly: token embeddings, per-step normalisations, causal Conv1D,
many-to-one heads (a last RNN without return_sequences, global pooling).

The rule is the one of tests/test_parity.py: fed one step at a time from a fresh state, the step model's
output at step t equals an eager Keras call on the first t+1 steps (<= 1e-5 in float32). For per-step
(sequence) models one call on the whole sequence gives every step; for many-to-one models each prefix is
its own call, `model(x[:t+1])`.
"""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
L = keras.layers

from models.convert import SUPPORTED_LAYERS, convert_model  # noqa: E402
from models.errors import ConversionError  # noqa: E402
from models.stepmodel import StepModel  # noqa: E402

TOL = 1e-5
LENGTHS = (1, 2, 37, 150)
F = 4
V = 30  # vocabulary of the token models


def randomize(model, seed=0):
    """Random weights that make every layer do real work: kernels N(0, 1/fan_in), contractive recurrent
    kernels, biases and normalisation offsets N(0, 0.3^2), positive variances, embeddings N(0, 1)."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        shape, name = tuple(w.shape), w.path.split("/")[-1]
        if not shape:
            continue  # e.g. Normalization's sample count
        if "variance" in name:
            value = rng.uniform(0.3, 3.0, size=shape)
        elif "mean" in name:
            value = rng.normal(0, 1, size=shape)
        elif "recurrent" in name:
            value = rng.normal(size=shape) * 0.8 / np.sqrt(shape[0])
        elif name == "embeddings":
            value = rng.normal(size=shape)
        elif len(shape) == 1:
            value = (1.0 if name in ("gamma", "scale") else 0.0) + rng.normal(size=shape) * 0.3
        else:
            value = rng.normal(size=shape) / np.sqrt(np.prod(shape[:-1]))
        w.assign(value.astype(np.float32))
    return model


def floats(*layers, features=F):
    return keras.Sequential([keras.Input((None, features)), *layers])


def tokens(*layers):
    return keras.Sequential([keras.Input((None,), dtype="int32"), *layers])


def rs(cls=L.LSTM, units=5, **kw):
    return cls(units, return_sequences=True, **kw)


def stream_one(step_model, xs):
    """Feed one sequence a step at a time at batch 1 (tokens: ids (T,)); (T, O) outputs."""
    state = step_model.initial_state(1)
    ys = []
    for x in np.asarray(xs, dtype=np.float32).reshape(len(xs), -1):
        y, state = step_model.step(x[None], state)
        ys.append(y[0])
    return np.array(ys)


def random_inputs(step_model, lengths, seed=0, mask_every=0):
    """Sequences of the given lengths: normal floats (T, F) or token ids (T,). With mask_every=k, every
    k-th step from step 1 on is a masked step (features at mask_value, or id 0)."""
    rng = np.random.default_rng(seed)
    out = []
    for t in lengths:
        if step_model.input_kind == "tokens":
            x = rng.integers(1, step_model.vocab_size, size=t).astype(np.int32)
        else:
            x = rng.normal(size=(t, step_model.feature_size)).astype(np.float32)
        if mask_every:
            x[1::mask_every] = 0 if step_model.mask_value is None else step_model.mask_value
        out.append(x)
    return out


def assert_sequence_parity(model, lengths=LENGTHS, seed=0, mask_every=0):
    """Per-step model: each sequence streamed alone equals one eager Keras call on it, at every step."""
    step_model = convert_model(randomize(model, seed))
    for xs in random_inputs(step_model, lengths, seed, mask_every):
        want = np.asarray(model(xs[None], training=False))[0]
        got = stream_one(step_model, xs)
        err = np.max(np.abs(got - want))
        assert err <= TOL, f"length {len(xs)}: max abs diff {err:.3g}"
    return step_model


def prefix_outputs(model, xs, steps):
    """model(x[:t+1]) for each t in steps: (len(steps), O)."""
    return np.stack([np.asarray(model(xs[None, :t + 1], training=False))[0] for t in steps])


def assert_prefix_parity(model, lengths=(1, 2, 25, 150), seed=0, mask_every=0, every=1):
    """Many-to-one model: the streamed output at step t equals model(x[:t+1]); all t of short sequences,
    every `every`-th t (and the last) of long ones."""
    step_model = convert_model(randomize(model, seed))
    assert step_model.many_to_one
    for xs in random_inputs(step_model, lengths, seed, mask_every):
        got = stream_one(step_model, xs)
        steps = sorted(set(range(0, len(xs), 1 if len(xs) <= 25 else every)) | {len(xs) - 1})
        want = prefix_outputs(model, xs, steps)
        both_nan = np.isnan(want) & np.isnan(got[steps])
        err = np.max(np.where(both_nan, 0, np.abs(got[steps] - want)))
        assert err <= TOL, f"length {len(xs)}: max abs diff {err:.3g}"
    return step_model


# --------------------------------------------------------------------------- per-step normalisations


def _adapted_normalization():
    layer = L.Normalization()
    layer.adapt(np.random.default_rng(9).normal(3.0, 2.0, size=(20, 7, F)).astype(np.float32))
    return layer


PER_STEP = {
    "layer_norm": lambda: floats(L.Dense(6), L.LayerNormalization(), rs(), L.LayerNormalization(epsilon=1e-5),
                                 L.Dense(2)),
    "layer_norm_no_center_no_scale": lambda: floats(L.LayerNormalization(center=False), rs(),
                                                    L.LayerNormalization(scale=False), L.Dense(2)),
    "layer_norm_rms_scaling": lambda: floats(L.LayerNormalization(rms_scaling=True), rs(L.GRU), L.Dense(2)),
    "rms_norm": lambda: floats(L.Dense(6), L.RMSNormalization(), rs(), L.RMSNormalization(epsilon=1e-3)),
    "batch_norm": lambda: floats(L.BatchNormalization(), rs(L.GRU), L.BatchNormalization(center=False),
                                 L.Dense(3), L.BatchNormalization(scale=False, epsilon=1e-5)),
    "normalization_adapted": lambda: floats(_adapted_normalization(), rs(), L.Dense(2)),
    "normalization_invert": lambda: floats(L.Normalization(mean=[1, 2, 3, 4.0], variance=[1, 4, 0.5, 2.0],
                                                           invert=True), rs(L.SimpleRNN)),
    "normalization_global": lambda: floats(L.Normalization(axis=None, mean=2.0, variance=3.0), rs()),
    "unit_norm": lambda: floats(L.Dense(6), L.UnitNormalization(), rs(), L.UnitNormalization()),
    "rescaling": lambda: floats(L.Rescaling(1 / 255.0, offset=0.5), L.Rescaling([1.0, 2.0, 3.0, 4.0]), rs()),
    "after_many_layers": lambda: floats(L.Rescaling(0.5), L.Normalization(mean=[0.1] * F, variance=[2.0] * F),
                                        L.Dense(6, activation="gelu"), L.LayerNormalization(), rs(),
                                        L.BatchNormalization(), L.Dense(3, activation="softmax")),
}


@pytest.mark.parametrize("case", sorted(PER_STEP))
def test_per_step_normalisations_stream_exactly(case):
    step_model = assert_sequence_parity(PER_STEP[case]())
    assert not step_model.many_to_one and step_model.input_kind == "float"


@pytest.mark.parametrize("norm", ["layer_norm", "batch_norm", "rms_norm", "unit_norm"])
def test_normalisations_between_masked_rnns(norm):
    """Masked steps keep the RNN states; the normalisations act on the repeated outputs. Keras'
    RMSNormalization does not support masking: it drops the mask, and the RNN after it sees every step."""
    layer = {"layer_norm": L.LayerNormalization, "batch_norm": L.BatchNormalization,
             "rms_norm": L.RMSNormalization, "unit_norm": L.UnitNormalization}[norm]()
    model = floats(L.Masking(0.0), rs(), layer, rs(L.GRU, 3), L.Dense(2))
    assert_sequence_parity(model, lengths=(1, 9, 60), mask_every=3)


# --------------------------------------------------------------------------- causal Conv1D


@pytest.mark.parametrize("kernel_size,dilation", [(1, 1), (2, 1), (3, 1), (5, 1), (2, 3), (3, 2), (4, 4)])
def test_causal_conv1d_streams_with_its_window_in_the_state(kernel_size, dilation):
    model = floats(L.Conv1D(6, kernel_size, padding="causal", dilation_rate=dilation, activation="relu"),
                   L.Dense(2))
    step_model = assert_sequence_parity(model)
    history = (kernel_size - 1) * dilation
    assert step_model.state_size == history * F
    assert step_model.state_layout == ([(model.layers[0].name + "/window", history * F)] if history else [])


def test_stacked_dilated_causal_convs_tcn():
    """A TCN-like stack (dilations 1, 2, 4, no bias on one, a linear one) then an LSTM; one long sequence."""
    model = floats(L.Conv1D(8, 3, padding="causal", dilation_rate=1, activation="relu"),
                   L.Conv1D(8, 3, padding="causal", dilation_rate=2, activation="tanh", use_bias=False),
                   L.Conv1D(6, 2, padding="causal", dilation_rate=4),
                   rs(units=4), L.Dense(2, activation="sigmoid"))
    step_model = assert_sequence_parity(model, lengths=LENGTHS + (1000,))
    assert step_model.state_size == 2 * F + 4 * 8 + 4 * 8 + 2 * 4  # windows (2, 4, 4 inputs) + LSTM h, c


def test_pointwise_conv1d_with_any_padding_is_a_per_step_dense():
    assert_sequence_parity(floats(L.Conv1D(5, 1, padding="same"), L.Conv1D(3, 1, padding="valid")))


def test_masking_before_a_causal_conv_ends_at_the_conv_like_keras():
    """Keras' Conv1D does not support masking: it sees the (zeroed) masked steps, and drops the mask,
    so the LSTM before it skips masked steps and the LSTM after it does not."""
    model = floats(L.Masking(0.0), rs(), L.Conv1D(4, 3, padding="causal"), rs(units=3))
    assert_sequence_parity(model, lengths=(1, 8, 70), mask_every=4)


# --------------------------------------------------------------------------- many-to-one


@pytest.mark.parametrize("cell", [L.LSTM, L.GRU, L.SimpleRNN])
def test_last_rnn_without_return_sequences_is_many_to_one(cell):
    first = [rs(L.GRU, 6)] if cell is L.LSTM else []  # once after another RNN
    model = floats(*first, cell(5), L.Dense(4, activation="relu"), L.Dense(3, activation="softmax"))
    step_model = assert_prefix_parity(model, every=19)
    assert step_model.output_size == 3


@pytest.mark.parametrize("zero_output", [False, True])
def test_many_to_one_rnn_with_masked_steps(zero_output):
    """A masked last step: Keras returns the last unmasked output (or zeros with zero_output_for_mask)."""
    model = floats(L.Masking(0.0), L.GRU(5, zero_output_for_mask=zero_output), L.Dense(2))
    assert_prefix_parity(model, lengths=(1, 2, 20), mask_every=3)


@pytest.mark.parametrize("pool", [L.GlobalAveragePooling1D, L.GlobalMaxPooling1D])
def test_global_pooling_heads(pool):
    model = floats(rs(units=6), pool(), L.Dense(3, activation="softmax"))
    step_model = assert_prefix_parity(model, every=19)
    assert step_model.state_size == 12 + (6 + 6 + 1 if pool is L.GlobalAveragePooling1D else 6 + 1)


@pytest.mark.parametrize("pool", [L.GlobalAveragePooling1D, L.GlobalMaxPooling1D])
def test_global_pooling_with_masked_steps(pool):
    """GlobalAveragePooling1D averages the unmasked steps only (NaN before the first one, as in Keras);
    GlobalMaxPooling1D ignores the mask (masked steps repeat the LSTM's previous output)."""
    model = floats(L.Masking(0.0), rs(units=5), pool(), L.Dense(2))
    step_model = convert_model(randomize(model))
    xs = random_inputs(step_model, [12])[0]
    xs[0] = xs[5] = xs[6] = 0.0  # a masked first step: the mean over no step yet
    got = stream_one(step_model, xs)
    want = prefix_outputs(model, xs, range(12))
    if pool is L.GlobalAveragePooling1D:
        assert np.isnan(got[0]).all() and np.isnan(want[0]).all()
        got, want = got[1:], want[1:]
    assert np.max(np.abs(got - want)) <= TOL
    assert_prefix_parity(model, lengths=(3, 40), mask_every=4, every=3)


def test_global_pooling_after_a_conv_that_drops_the_mask():
    model = floats(L.Masking(0.0), L.Conv1D(4, 3, padding="causal"), L.GlobalAveragePooling1D(), L.Dense(2))
    assert_prefix_parity(model, lengths=(2, 30), mask_every=3)


def test_global_average_over_a_long_stream_stays_within_float32_rounding():
    """10,000 steps of values around 3 (up to ~6 after the Dense). The running mean is Kahan-compensated:
    it stays within float32 rounding of the exact (float64) mean at every length. Keras' one float32
    reduction has its own rounding, which grows with the length: within 1e-5 of it at 150 steps, and about
    1e-5 at 10,000 (Keras vs exact, not the stream, is what differs there)."""
    model = floats(L.Dense(6), L.GlobalAveragePooling1D())
    step_model = convert_model(randomize(model, 3))
    xs = np.random.default_rng(3).normal(3.0, 1.0, size=(10_000, F)).astype(np.float32)
    got, _ = step_model.run(xs)
    dense = xs @ step_model.weights()["0.kernel"] + step_model.weights()["0.bias"]  # (numpy; float32)
    exact = np.cumsum(dense.astype(np.float64), axis=0) / np.arange(1, 10_001)[:, None]
    assert np.max(np.abs(got - exact) / np.maximum(np.abs(exact), 1.0)) <= 1e-6
    steps = [149, 4_999, 9_999]
    want = prefix_outputs(model, xs, steps)
    assert np.max(np.abs(got[149] - want[0])) <= TOL
    assert np.max(np.abs(got[steps] - want)) <= 5e-5
    assert step_model.run(xs[:150])[1][-1] == 150  # the count of steps, in the state


def test_a_sequence_classifier_updates_its_class_probabilities_per_event():
    """The README's example: class probabilities after each event equal the model on the events so far."""
    model = floats(L.Masking(0.0), L.GRU(8), L.Dense(3, activation="softmax"), features=F)
    step_model = convert_model(randomize(model, 4))
    xs = np.random.default_rng(4).normal(size=(20, F)).astype(np.float32)
    probs = stream_one(step_model, xs)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert np.max(np.abs(probs - prefix_outputs(model, xs, range(20)))) <= TOL
    assert np.max(np.abs(probs[-1] - np.asarray(model(xs[None]))[0])) <= TOL  # the whole sequence's answer


# --------------------------------------------------------------------------- token models


@pytest.mark.parametrize("mask_zero", [False, True])
def test_embedding_then_lstm_per_step(mask_zero):
    model = tokens(L.Embedding(V, 6, mask_zero=mask_zero), rs(), L.Dense(2))
    step_model = assert_sequence_parity(model, lengths=LENGTHS + (1000,), mask_every=4)
    assert (step_model.input_kind, step_model.vocab_size, step_model.feature_size) == ("tokens", V, 1)
    assert step_model.mask_value == (0.0 if mask_zero else None)


def test_token_classifier_many_to_one_with_masked_ids():
    model = tokens(L.Embedding(V, 6, mask_zero=True), L.GRU(5), L.Dense(3, activation="softmax"))
    assert_prefix_parity(model, lengths=(1, 3, 25, 90), mask_every=3, every=5)


def test_token_conv_pooling_classifier():
    model = tokens(L.Embedding(V, 5), L.Conv1D(6, 3, padding="causal", activation="relu"),
                   L.GlobalMaxPooling1D(), L.Dense(2, activation="softmax"))
    assert_prefix_parity(model, lengths=(1, 4, 25, 60), every=4)


# --------------------------------------------------------------------------- batched streams at different positions


def test_batched_streams_at_different_positions_equal_streams_alone():
    """Streams that start at different times, stepped together in one batch (state rows gathered and
    scattered like the engine does), give what each gives alone: windows, counts and maxima are per stream."""
    model = floats(L.Masking(0.0), L.Conv1D(5, 3, padding="causal", dilation_rate=2), rs(units=4),
                   L.LayerNormalization(), L.GlobalAveragePooling1D(), L.Dense(2))
    step_model = convert_model(randomize(model, 5))
    seqs = random_inputs(step_model, [30, 11, 25, 1], seed=5, mask_every=5)
    starts = [0, 3, 7, 12]
    alone = [stream_one(step_model, xs) for xs in seqs]
    state = step_model.initial_state(len(seqs))
    got = [[] for _ in seqs]
    for tick in range(max(s + len(x) for s, x in zip(starts, seqs))):
        live = [i for i, (s, x) in enumerate(zip(starts, seqs)) if s <= tick < s + len(x)]
        x = np.stack([seqs[i][tick - starts[i]] for i in live])
        y, state[live] = step_model.step(x, state[live])
        for row, i in enumerate(live):
            got[i].append(y[row])
    for i in range(len(seqs)):  # (BLAS rounds a batch's matmul a little differently from a single row's)
        np.testing.assert_allclose(np.array(got[i]), alone[i], rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- refusals


REFUSED = {
    "conv_same": (lambda: floats(L.Conv1D(3, 3, padding="same", name="c")), r"'c' \(Conv1D\).*future steps"),
    "conv_valid": (lambda: floats(L.Conv1D(3, 2, name="c")), r"'c' \(Conv1D\).*padding='valid'"),
    "conv_strides": (lambda: floats(L.Conv1D(3, 2, strides=2, padding="causal", name="c")), r"'c'.*strides=2"),
    "conv_groups": (lambda: floats(L.Conv1D(4, 2, groups=2, padding="causal", name="c")), r"'c'.*groups=2"),
    "conv_channels_first": (lambda: keras.Sequential([keras.Input((F, 6)), L.Conv1D(
        3, 1, data_format="channels_first", name="c")]), r"'c'.*channels_first"),
    "pool_keepdims": (lambda: floats(rs(), L.GlobalAveragePooling1D(keepdims=True, name="p")), r"'p'.*keepdims"),
    "pool_channels_first": (lambda: floats(rs(), L.GlobalMaxPooling1D(data_format="channels_first", name="p")),
                            r"'p'.*channels_first"),
    "embedding_on_features": (lambda: floats(L.Embedding(V, 3, name="e")), r"'e' \(Embedding\).*first layer"),
    "embedding_late": (lambda: tokens(L.Embedding(V, 3), L.Embedding(V, 3, name="e2")), r"'e2'.*after other"),
    "tokens_without_embedding": (lambda: keras.Sequential([keras.Input((None,)), L.Rescaling(2.0, name="d")]),
                                 r"first layer 'd' is not an Embedding"),
    "layer_norm_time_axis": (lambda: keras.Sequential([keras.Input((6, F)), L.LayerNormalization(
        axis=(1, 2), name="ln")]), r"'ln' \(LayerNormalization\).*axis"),
    "normalization_time_axis": (lambda: keras.Sequential([keras.Input((6, F)), L.Normalization(
        axis=1, mean=np.zeros(6), variance=np.ones(6), name="n")]), r"'n' \(Normalization\).*axis"),
    "unit_norm_time_axis": (lambda: keras.Sequential([keras.Input((6, F)), L.UnitNormalization(
        axis=1, name="u")]), r"'u'.*axis"),
    "rescaling_shape": (lambda: floats(L.Rescaling(np.ones((3, F)), name="r")), r"'r' \(Rescaling\).*shape"),
    "pool_then_pool": (lambda: floats(rs(), L.GlobalAveragePooling1D(), L.Reshape((1, 5)),
                                      L.GlobalMaxPooling1D(name="p2")), r"\(Reshape\)"),
    "repeat_vector": (lambda: floats(L.LSTM(3), L.RepeatVector(4, name="rv"), rs()), r"'rv' \(RepeatVector\)"),
    "bidirectional": (lambda: floats(L.Bidirectional(L.LSTM(3), name="bi")), r"'bi' \(Bidirectional\)"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refusals_name_the_layer_and_the_reason(case):
    build, pattern = REFUSED[case]
    with pytest.raises(ConversionError, match=pattern) as info:
        convert_model(build())
    assert "\n" not in str(info.value)


def test_supported_layers_list_the_new_layers():
    for name in ("Embedding", "Conv1D(causal)", "LayerNormalization", "BatchNormalization", "Normalization",
                 "UnitNormalization", "Rescaling", "GlobalAveragePooling1D", "GlobalMaxPooling1D"):
        assert name in SUPPORTED_LAYERS


# --------------------------------------------------------------------------- files


def test_every_new_kind_round_trips_through_files_with_its_version(tmp_path):
    model = tokens(L.Embedding(V, 6, mask_zero=True), L.Rescaling(0.5, offset=0.1), L.LayerNormalization(),
                   L.Conv1D(5, 2, padding="causal", dilation_rate=3), L.BatchNormalization(), L.UnitNormalization(),
                   L.RMSNormalization(), rs(), L.Normalization(mean=np.zeros(5), variance=np.ones(5) * 2),
                   L.GlobalMaxPooling1D(), L.Dense(3, activation="softmax"))
    step_model = convert_model(randomize(model, 6))
    step_model.save(tmp_path)
    again = StepModel.load(tmp_path)
    assert again.version == step_model.version and again.layers == step_model.layers
    assert (again.input_kind, again.vocab_size, again.many_to_one) == ("tokens", V, True)
    for key, value in step_model.weights().items():  # every weight is an array, saved as it was converted
        assert isinstance(value, np.ndarray) and np.array_equal(again.weights()[key], value), key
    np.testing.assert_array_equal(step_model.weights()["1.offset"], np.full(6, 0.1, np.float32))
    ids = np.random.default_rng(6).integers(0, V, size=(3, 40))
    np.testing.assert_array_equal(again.run(ids)[0], step_model.run(ids)[0])
