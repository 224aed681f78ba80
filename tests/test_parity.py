"""Streaming equals offline: the converted step model, fed one timestep at a time from a fresh
state, reproduces the Keras model's full-sequence output (an eager `model(x)` call, the path
that is right for dynamic lengths) at every real step, within 1e-5 in float32."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
L = keras.layers

from models.convert import convert_model  # noqa: E402

TOL = 1e-5
LENGTHS = (1, 2, 37, 400, 1000)  # a few, including one long one


def randomize(model, seed, gain=1.0, recurrent_gain=1.0, bias=0.3):
    """Random (untrained) weights scaled so that the recurrences do real work: kernels
    N(0, gain^2 / fan_in), recurrent kernels N(0, recurrent_gain^2 / units), biases N(0, bias^2)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        cell = getattr(layer, "cell", None)
        for w in layer.weights:
            shape = tuple(w.shape)
            name = w.path.split("/")[-1]
            if "recurrent" in name:
                value = rng.normal(size=shape) * recurrent_gain / np.sqrt(shape[0])
            elif "bias" in name:
                value = rng.normal(size=shape) * bias
            else:
                value = rng.normal(size=shape) * gain / np.sqrt(shape[0])
            w.assign(value.astype(np.float32))
        del cell
    return model


def stream_one(step_model, xs):
    """Feed a (T, F) sequence one step at a time at batch 1; return (T, O) outputs, states."""
    state = step_model.initial_state(1)
    ys, states = [], []
    for x in xs:
        y, state = step_model.step(x[None], state)
        ys.append(y[0])
        states.append(state[0])
    return np.array(ys), np.array(states)


def keras_out(model, xs):
    return np.asarray(model(xs[None], training=False))[0]


def assert_parity(model, seed=0, lengths=LENGTHS, scale=1.0):
    """Random sequences of the given lengths, each streamed alone from a fresh state, against
    one eager Keras call on all of them (post-padded to the longest: without masking an RNN's
    output at step t depends only on steps <= t, so the padding after a sequence cannot matter,
    and one batched call keeps the slow eager time loop to a single pass)."""
    step_model = convert_model(model)
    rng = np.random.default_rng(seed)
    f = step_model.feature_size
    seqs = [(rng.normal(size=(t, f)) * scale).astype(np.float32) for t in lengths]
    batch = rng.normal(size=(len(seqs), max(lengths), f)).astype(np.float32)
    for b, xs in enumerate(seqs):
        batch[b, :len(xs)] = xs
    want = np.asarray(model(batch, training=False))
    for b, xs in enumerate(seqs):
        got, _ = stream_one(step_model, xs)
        err = np.max(np.abs(got - want[b, :len(xs)]))
        assert err <= TOL, f"length {len(xs)}: max abs diff {err:.3g}"
    return step_model


def qa_model():
    """The Q&A's model (its TimeDistributed head included) with return_sequences on both LSTMs."""
    return keras.Sequential([
        keras.Input((None, 5)),
        L.LSTM(32, return_sequences=True),
        L.LSTM(8, return_sequences=True),
        L.TimeDistributed(L.Dense(2, activation="sigmoid")),
    ])


def test_qa_model_random_weights():
    model = randomize(qa_model(), seed=1, gain=1.5, recurrent_gain=1.2)
    step_model = assert_parity(model)
    assert step_model.state_layout == [
        (model.layers[0].name + "/h", 32), (model.layers[0].name + "/c", 32),
        (model.layers[1].name + "/h", 8), (model.layers[1].name + "/c", 8)]
    # the recurrence is non-trivial: the outputs move over time and depend on the past
    xs = np.random.default_rng(5).normal(size=(60, 5)).astype(np.float32)
    ys, _ = stream_one(step_model, xs)
    assert ys.std(axis=0).min() > 1e-2
    xs2 = xs.copy()
    xs2[0] += 1.0
    ys2, _ = stream_one(step_model, xs2)
    assert np.abs(ys2[10] - ys[10]).max() > 1e-4  # step 0 still matters 10 steps later


def test_qa_model_briefly_fitted():
    """The Q&A task, fitted for a few batches (fixed length per batch), then checked on other lengths."""
    from models.data import qa_targets

    keras.utils.set_random_seed(3)
    model = qa_model()
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="categorical_crossentropy")
    rng = np.random.default_rng(3)
    x = rng.random((64, 20, 5)).astype(np.float32)
    y = np.stack([qa_targets(s) for s in x])
    model.fit(x, y, batch_size=32, epochs=2, verbose=0)
    step_model = convert_model(model)
    xs = rng.random((200, 5)).astype(np.float32)
    got, _ = stream_one(step_model, xs)
    assert np.max(np.abs(got - keras_out(model, xs))) <= TOL


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("use_bias", [True, False])
def test_gru(reset_after, use_bias):
    model = keras.Sequential([
        keras.Input((None, 4)),
        L.GRU(12, return_sequences=True, reset_after=reset_after, use_bias=use_bias),
        L.GRU(5, return_sequences=True, reset_after=reset_after),
        L.Dense(3),
    ])
    assert_parity(randomize(model, seed=2, gain=1.5, recurrent_gain=1.2), lengths=(1, 120))


@pytest.mark.parametrize("use_bias", [True, False])
def test_simple_rnn_and_lstm_without_bias(use_bias):
    model = keras.Sequential([
        keras.Input((None, 3)),
        L.SimpleRNN(10, return_sequences=True, use_bias=use_bias),
        L.LSTM(6, return_sequences=True, use_bias=use_bias),
        L.Dense(2, use_bias=use_bias),
    ])
    assert_parity(randomize(model, seed=4, gain=1.5, recurrent_gain=0.9), lengths=(1, 120))


def test_mixed_stack_with_dense_between_rnns_and_other_activations():
    model = keras.Sequential([
        keras.Input((None, 6)),
        L.GRU(10, return_sequences=True),
        L.Dropout(0.5),
        L.Dense(8, activation="elu"),
        L.LSTM(7, return_sequences=True, activation="softsign", recurrent_activation="hard_sigmoid"),
        L.SpatialDropout1D(0.2),
        L.Dense(6, activation="relu"),
        L.Activation("swish"),
        L.GaussianNoise(1.0),
        L.SimpleRNN(5, return_sequences=True, activation="selu"),
        L.Dense(4, activation="softmax"),
    ])
    assert_parity(randomize(model, seed=6, gain=1.5, recurrent_gain=1.0), lengths=(1, 300))


def test_functional_chain_with_layer_activations():
    i = keras.Input((None, 4))
    x = L.GRU(8, return_sequences=True, reset_after=False, recurrent_activation="tanh")(i)
    x = L.LeakyReLU(0.1)(x)
    x = L.TimeDistributed(L.Dense(6, activation="gelu"))(x)
    x = L.RNN(L.LSTMCell(5, activation="relu"), return_sequences=True)(x)
    x = L.ReLU(max_value=0.8, negative_slope=0.05)(x)
    x = L.Dense(2, activation="log_softmax")(x)
    # relu cell activation and tanh gates make unbounded, sign-flipping recurrences: keep them
    # contractive, or float32 rounding differences grow chaotically over hundreds of steps.
    model = randomize(keras.Model(i, x), seed=7, gain=1.5, recurrent_gain=0.5)
    assert_parity(model, lengths=(1, 200))


def padded_batch(seqs, length, pre, value=0.0):
    f = seqs[0].shape[1]
    batch = np.full((len(seqs), length, f), value, np.float32)
    for b, s in enumerate(seqs):
        if pre:
            batch[b, length - len(s):] = s
        else:
            batch[b, :len(s)] = s
    return batch


@pytest.mark.parametrize("pre", [False, True], ids=["post-padding", "pre-padding"])
def test_masking_padded_keras_batch_equals_streaming_real_steps(pre):
    """Keras on a padded, masked batch == the step model fed only each sequence's real steps;
    fed the pads too, the step model keeps the state and repeats the previous output (like Keras)."""
    model = keras.Sequential([
        keras.Input((None, 3)),
        L.Masking(mask_value=0.0),
        L.LSTM(9, return_sequences=True),
        L.Dense(5, activation="tanh"),
        L.GRU(4, return_sequences=True),
        L.Dense(2),
    ])
    randomize(model, seed=8, gain=1.5, recurrent_gain=1.2)
    step_model = convert_model(model)
    assert step_model.mask_value == 0.0
    rng = np.random.default_rng(8)
    seqs = [rng.normal(size=(t, 3)).astype(np.float32) for t in (1, 40, 120)]
    batch = padded_batch(seqs, 120, pre)
    want = np.asarray(model(batch, training=False))
    for b, s in enumerate(seqs):
        real = slice(120 - len(s), 120) if pre else slice(0, len(s))
        got, _ = stream_one(step_model, s)  # real steps only, from a fresh state
        assert np.max(np.abs(got - want[b, real])) <= TOL
        # the padded sequence streamed as-is: matches Keras at every step, pads keep the state
        got_all, states = stream_one(step_model, batch[b])
        assert np.max(np.abs(got_all - want[b])) <= TOL
        pads = np.flatnonzero(~(batch[b] != 0).any(axis=1))
        for t in pads:
            before = states[t - 1] if t > 0 else np.zeros(step_model.state_size, np.float32)
            assert np.array_equal(states[t], before)


def test_masking_gap_in_the_middle():
    model = keras.Sequential([keras.Input((None, 2)), L.Masking(-1.0), L.SimpleRNN(4, return_sequences=True),
                              L.Dense(1)])
    randomize(model, seed=9, recurrent_gain=1.0)
    step_model = convert_model(model)
    xs = np.random.default_rng(9).normal(size=(30, 2)).astype(np.float32)
    xs[10:14] = -1.0
    got, states = stream_one(step_model, xs)
    assert np.max(np.abs(got - keras_out(model, xs))) <= TOL
    assert all(np.array_equal(states[t], states[9]) for t in range(10, 14))
    assert np.array_equal(got[10], got[9])  # a masked step repeats the previous output


def test_batch_of_streams_equals_streams_alone():
    """Streams of different lengths, started at different times, stepped together in one batch."""
    model = randomize(qa_model(), seed=10, gain=1.5, recurrent_gain=1.2)
    step_model = convert_model(model)
    rng = np.random.default_rng(10)
    seqs = [rng.normal(size=(t, 5)).astype(np.float32) for t in (5, 60, 33, 1)]
    starts = [0, 3, 20, 50]
    alone = [keras_out(model, s) for s in seqs]
    state = step_model.initial_state(len(seqs))
    got = [[] for _ in seqs]
    for t in range(max(st + len(s) for st, s in zip(starts, seqs))):
        active = [b for b, (st, s) in enumerate(zip(starts, seqs)) if st <= t < st + len(s)]
        if not active:
            continue
        x = np.stack([seqs[b][t - starts[b]] for b in active])
        # a fresh stream starts from the initial state
        for b in active:
            if t == starts[b]:
                state[b] = 0.0
        y, new = step_model.step(x, state[active])
        state[active] = new
        for row, b in enumerate(active):
            got[b].append(y[row])
    for b in range(len(seqs)):
        assert np.max(np.abs(np.array(got[b]) - alone[b])) <= TOL


def test_streamer_train_output_converts_with_parity(tmp_path):
    """The product's own path: `streamer train` writes DIR/model.keras (masked, post-padded
    training); load_step_model(DIR) converts it; streaming each sequence's real steps equals
    Keras on the padded batch."""
    from models.data import synthetic_sequences
    from models.serving import load_keras_model, load_step_model
    from streamer.cli import main

    out = tmp_path / "run"
    argv = ["train", "--synthetic", "--out", str(out), "--units", "8,4", "--epochs", "1",
            "--sequences", "48", "--batch-size", "16", "--max-len", "30", "--eval-sequences", "0",
            "--verbose", "0"]
    assert main(argv) == 0
    step_model = load_step_model(out)
    model = load_keras_model(out / "model.keras")
    assert step_model.mask_value == 0.0
    seqs = [r.features for r in synthetic_sequences(3, 5, 150, seed=np.random.default_rng(11))]
    want = np.asarray(model(padded_batch(seqs, max(len(s) for s in seqs), pre=False), training=False))
    for b, s in enumerate(seqs):
        got, _ = stream_one(step_model, s)
        assert np.max(np.abs(got - want[b, :len(s)])) <= TOL


BETWEEN = {
    "dense": lambda: L.Dense(4, activation="tanh", bias_initializer="ones"),
    "time_distributed": lambda: L.TimeDistributed(L.Dense(4, bias_initializer="ones")),
    "activation": lambda: L.Activation("relu"),
    "dropouts": lambda: keras.Sequential([L.Dropout(0.3), L.SpatialDropout1D(0.2), L.GaussianNoise(0.5)]),
    "rnn": lambda: L.GRU(4, return_sequences=True, reset_after=False),
    "nested": lambda: keras.Sequential([L.Dense(4, bias_initializer="ones"), L.LeakyReLU()]),
}


@pytest.mark.parametrize("between", sorted(BETWEEN))
def test_keras_mask_reaches_rnns_through_other_layers(between):
    """The step model masks every RNN after the Masking layer; Keras must do the same through
    each kind of layer in between (a mask that stopped would change the pads' effect)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras warns that nested models drop masks; they don't
        model = keras.Sequential([keras.Input((None, 3)), L.Masking(0.0), BETWEEN[between](),
                                  L.LSTM(5, return_sequences=True), L.Dense(2)])
        step_model = convert_model(model)
        x = np.random.default_rng(12).normal(size=(2, 14, 3)).astype(np.float32)
        x[0, 3:6] = 0.0
        x[1, :4] = 0.0
        x[1, -3:] = 0.0
        want = np.asarray(model(x, training=False))
    got, _ = step_model.run(x)
    assert np.max(np.abs(got - want)) <= TOL


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "SimpleRNN"])
def test_zero_output_for_mask(cls):
    """RNN(..., zero_output_for_mask=True): masked steps keep the state but output zeros."""
    rnn = getattr(L, cls)
    model = keras.Sequential([keras.Input((None, 3)), L.Masking(0.0),
                              rnn(4, return_sequences=True, zero_output_for_mask=True),
                              L.Dense(3, bias_initializer="ones"), rnn(2, return_sequences=True)])
    step_model = convert_model(model)
    x = np.random.default_rng(13).normal(size=(2, 12, 3)).astype(np.float32)
    x[0, 3:6] = 0.0
    x[1, -3:] = 0.0
    got, _ = step_model.run(x)
    assert np.max(np.abs(got - np.asarray(model(x, training=False)))) <= TOL
