"""Conversion rules (what streams, what is refused and why), the loader, and `streamer convert`."""

from __future__ import annotations

import json

import numpy as np
import pytest

keras = pytest.importorskip("keras")
L = keras.layers

from models.convert import convert_model  # noqa: E402
from models.errors import ConversionError, ModelError  # noqa: E402
from models.serving import load_step_model  # noqa: E402
from models.stepmodel import StepModel  # noqa: E402
from streamer.cli import main  # noqa: E402


def seq(*layers, features=4):
    return keras.Sequential([keras.Input((None, features)), *layers])


def rs(layer_cls, units=3, **kw):
    return layer_cls(units, return_sequences=True, **kw)


REFUSED = {
    "bidirectional": (lambda: seq(L.Bidirectional(rs(L.LSTM))), r"'bidirectional' \(Bidirectional\).*future"),
    # the encoder before a RepeatVector is many-to-one (fine); the RepeatVector is refused
    "repeat_vector": (lambda: seq(L.LSTM(3, name="enc"), L.RepeatVector(5, name="rep"), rs(L.LSTM)),
                      r"'rep' \(RepeatVector\).*repeats"),
    "go_backwards": (lambda: seq(rs(L.GRU, go_backwards=True, name="back")), r"'back' \(GRU\).*go_backwards"),
    "return_state": (lambda: keras.Model(*(lambda i: (i, L.SimpleRNN(2, return_sequences=True,
                                                       return_state=True, name="rst")(i)[0]))(
        keras.Input((None, 4)))), r"'rst'.*return_state|not a linear chain"),
    "conv1d": (lambda: seq(L.Conv1D(3, 2, name="conv"), rs(L.LSTM)), r"'conv' \(Conv1D\).*padding='valid'"),
    "attention": (lambda: keras.Model(*(lambda i: (i, L.MultiHeadAttention(1, 2, name="mha")(i, i)))(
        keras.Input((None, 4)))), r"mha|not a linear chain"),
    "lambda": (lambda: seq(L.Lambda(lambda x: x * 2, name="lam"), rs(L.LSTM)), r"'lam' \(Lambda\)"),
    "flatten": (lambda: keras.Sequential([keras.Input((6, 4)), rs(L.LSTM), L.Flatten(name="flat")]),
                r"'flat'.*collapses"),
    "masking_late": (lambda: seq(rs(L.LSTM), L.Masking(name="late"), rs(L.LSTM)), r"'late' \(Masking\).*first"),
    "two_maskings": (lambda: seq(L.Masking(), L.Masking(name="m2"), rs(L.LSTM)), r"'m2'.*second Masking"),
    "batchnorm_time_axis": (lambda: keras.Sequential([keras.Input((6, 4)), rs(L.LSTM), L.BatchNormalization(axis=1, name="bn")]),
                            r"'bn' \(BatchNormalization\).*axis 1"),
    "softmax_layer_with_mask": (lambda: seq(L.Masking(), rs(L.LSTM), L.Softmax(name="sm")), r"'sm' \(Softmax\)"),
    "custom_activation": (lambda: seq(L.Dense(2, activation=lambda x: x * 3, name="odd")), r"'odd'.*custom activation"),
    "td_of_lstm": (lambda: seq(L.TimeDistributed(L.Dense(2)), L.TimeDistributed(L.Flatten(), name="tdf")),
                   r"'tdf'.*TimeDistributed\(Flatten\)"),
    "stacked_cells": (lambda: seq(L.RNN(L.StackedRNNCells([L.LSTMCell(2), L.LSTMCell(2)]),
                                        return_sequences=True, name="stk")), r"'stk' \(RNN\)"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_with_one_line_naming_the_layer(case):
    build, pattern = REFUSED[case]
    with pytest.raises(ConversionError, match=pattern) as info:
        convert_model(build())
    assert "\n" not in str(info.value)


def test_non_linear_topologies_are_refused():
    i = keras.Input((None, 4))
    a = L.Dense(3)(i)
    b = L.Dense(3)(i)
    with pytest.raises(ConversionError, match="not a linear chain"):
        convert_model(keras.Model(i, L.Add()([a, b])))
    i2 = keras.Input((None, 4))
    with pytest.raises(ConversionError, match="2 inputs"):
        convert_model(keras.Model([i, i2], L.Add()([L.Dense(3)(i), L.Dense(3)(i2)])))
    shared = L.Dense(4)
    with pytest.raises(ConversionError, match="called 2 times|not a linear chain"):
        convert_model(keras.Model(i, shared(shared(i))))
    with pytest.raises(ConversionError, match="training=True"):
        convert_model(keras.Model(i, L.Dropout(0.3, name="mc")(L.Dense(2)(i), training=True)))


def test_wrong_input_and_subclassed_models_are_refused():
    with pytest.raises(ConversionError, match=r"\(batch, time, features\)"):
        convert_model(keras.Sequential([keras.Input((4,)), L.Dense(2)]))

    class Custom(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ConversionError, match="subclassed"):
        convert_model(Custom())

    class MyLSTM(L.LSTM):
        pass

    with pytest.raises(ConversionError, match=r"custom layer class \(subclass of LSTM\)"):
        convert_model(seq(MyLSTM(3, return_sequences=True, name="mine")))


def test_accepted_options_and_layer_forms():
    """stateful, unroll, dropouts, nested chains and layer-form activations all convert."""
    inner = keras.Sequential([L.Dense(5), L.ELU(0.5), L.Activation("hard_sigmoid")], name="inner")
    i = keras.Input((None, 4))
    x = L.AlphaDropout(0.1)(i)
    x = L.SimpleRNN(6, return_sequences=True, unroll=False, dropout=0.3, recurrent_dropout=0.2)(x)
    x = inner(x)
    x = L.GaussianDropout(0.2)(x)
    x = L.ActivityRegularization(0.01)(x)
    x = L.GRU(4, return_sequences=True, reset_after=False)(x)
    x = L.Softmax()(x)
    model = keras.Model(i, x)
    sm = convert_model(model)
    assert [lay["kind"] for lay in sm.layers] == ["simple_rnn", "dense", "activation", "activation",
                                                  "gru", "activation"]
    assert sm.layers[2]["activation"] == {"name": "elu", "alpha": 0.5}
    # stateful / fixed-batch models: same weights, same per-step function
    stateful = keras.Sequential([keras.Input((None, 4), batch_size=2),
                                 L.LSTM(3, return_sequences=True, stateful=True), L.Dense(1)])
    assert convert_model(stateful).state_size == 6
    # mixed precision: the step model computes in float32 (Keras' float16 is the less exact one)
    half = seq(rs(L.GRU, 4, dtype="mixed_float16"), L.Dense(2, dtype="float32"))
    assert convert_model(half).output_size == 2


def test_fixed_length_input_converts_and_streams_any_length():
    model = keras.Sequential([keras.Input((12, 3)), L.Masking(0.0), L.LSTM(4, return_sequences=True), L.Dense(2)])
    sm = convert_model(model)  # the self-check runs at the model's own length
    ys, _ = sm.run(np.ones((40, 3), np.float32))
    assert ys.shape == (40, 2)


def test_self_check_catches_semantic_drift():
    """If the converter got a layer's maths wrong, `verify` refuses instead of serving it."""
    model = seq(L.Dense(3, activation="tanh", name="d"))
    sm = convert_model(model)
    w = sm.weights()
    w["0.bias"] = w["0.bias"] + 1.0
    bad = StepModel(sm.layers, w, 4)
    from models import convert as conv

    with pytest.raises(ConversionError, match="self-check failed"):
        conv._verify(model, bad)


@pytest.fixture(scope="module")
def qa_keras_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("qa")
    model = keras.Sequential([keras.Input((None, 5)), L.Masking(0.0), L.LSTM(32, return_sequences=True),
                              L.LSTM(8, return_sequences=True), L.TimeDistributed(L.Dense(2, activation="sigmoid"))])
    path = d / "model.keras"
    model.save(path)
    return path, model


def test_load_step_model_from_keras_file_train_dir_and_converted_dir(qa_keras_file, tmp_path):
    path, model = qa_keras_file
    a = load_step_model(path)
    b = load_step_model(path.parent)  # a `streamer train` style directory (model.keras inside)
    assert a.version == b.version == convert_model(model).version
    a.save(tmp_path / "conv")
    c = load_step_model(tmp_path / "conv")
    assert c.version == a.version and c.mask_value == 0.0
    with pytest.raises(ModelError, match="no step_model.json"):
        load_step_model(tmp_path)
    with pytest.raises(ModelError, match="no such file"):
        load_step_model(tmp_path / "missing.keras")


def test_lambda_keras_file_is_refused_safely(tmp_path):
    model = seq(L.Lambda(lambda x: x + 1), rs(L.LSTM))
    model.save(tmp_path / "lam.keras")
    with pytest.raises(ConversionError, match="Lambda layer.*safe_mode=True"):
        load_step_model(tmp_path / "lam.keras")


def test_cli_convert_writes_artifact(qa_keras_file, tmp_path, capsys):
    path, model = qa_keras_file
    out = tmp_path / "served"
    assert main(["convert", str(path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    sm = StepModel.load(out)
    assert manifest["version"] == sm.version and sm.version in printed
    assert manifest["state_layout"][0][1] == 32 and manifest["mask_value"] == 0.0
    assert [lay["kind"] for lay in manifest["layers"]] == ["lstm", "lstm", "dense"]
    xs = np.random.default_rng(0).normal(size=(30, 5)).astype(np.float32)
    np.testing.assert_allclose(sm.run(xs)[0], np.asarray(model(xs[None]))[0], atol=1e-5)


def test_cli_convert_errors_are_one_line_exit_2(tmp_path, capsys):
    model = seq(L.Bidirectional(rs(L.GRU), name="bidi"))
    model.save(tmp_path / "bi.keras")
    assert main(["convert", str(tmp_path / "bi.keras"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("streamer: error: layer 'bidi' (Bidirectional) cannot stream")
    assert main(["convert", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_convert_refuses_to_write_into_a_train_dir(qa_keras_file, capsys):
    path, _ = qa_keras_file
    assert main(["convert", str(path), "--out", str(path.parent)]) == 2
    assert "holds a `streamer train` output" in capsys.readouterr().err
