"""models.predict: bucketed offline prediction on mixed lengths, model loading, evaluation."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from models.data import SeqRecord, qa_targets  # noqa: E402
from models.errors import DataError, ModelError  # noqa: E402
from models.predict import Forward, evaluate, load_keras_model, predict_sequences  # noqa: E402
from tests.helpers_models import eager, qa_style_model, random_sequences, tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def lstm_model():
    return tiny_model(units=(8, 4), seed=7)


def test_mixed_lengths_1_to_1000_match_per_sequence_calls(lstm_model):
    rng = np.random.default_rng(0)
    lengths = [1, 1000, 2, 999, 3] + rng.integers(1, 1001, 40).tolist() + [500, 500, 1, 64]
    seqs = random_sequences(lengths, seed=1)
    out = predict_sequences(lstm_model, seqs, batch_size=8)
    assert [o.shape for o in out] == [(n, 2) for n in lengths]
    assert all(o.dtype == np.float32 for o in out)
    for x, y in zip(seqs, out):  # Keras's own unpadded, batch-of-one call for every sequence
        np.testing.assert_allclose(y, lstm_model.predict_on_batch(x[None])[0], atol=1e-5)
    for x, y in zip(seqs, out):  # and plain eager calls where they are cheap
        if len(x) <= 20:
            np.testing.assert_allclose(y, eager(lstm_model, x), atol=1e-5)


@pytest.mark.parametrize("masking", [True, False])
def test_post_padding_never_changes_real_steps(masking):
    model = tiny_model(cell="gru", units=(5,), masking=masking, seed=2)
    seqs = random_sequences([7, 2, 30, 11, 30, 1], seed=3)
    together = predict_sequences(model, seqs, batch_size=64)  # one bucket: padded to 30
    alone = predict_sequences(model, seqs, batch_size=1)  # no padding at all
    for a, b in zip(together, alone):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_time_distributed_models_predict_right_shapes_and_values():
    model = qa_style_model(seed=3)  # the Q&A's model, TimeDistributed head and all
    seqs = random_sequences([3, 11, 7, 1, 40, 11], seed=4)
    out = predict_sequences(model, seqs, batch_size=2)
    assert [o.shape for o in out] == [(n, 2) for n in (3, 11, 7, 1, 40, 11)]
    for x, y in zip(seqs, out):
        np.testing.assert_allclose(y, eager(model, x), atol=1e-5)


def test_forward_is_reusable_and_limits_steps_per_batch(lstm_model):
    forward = Forward(lstm_model)
    seqs = random_sequences([300, 5, 299, 6], seed=5)
    a = predict_sequences(forward, seqs, batch_size=64, max_batch_steps=100)  # forces 1 sequence per batch
    b = predict_sequences(forward, seqs)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, atol=1e-5)
    assert predict_sequences(forward, []) == []


def test_bad_sequences_are_refused(lstm_model):
    with pytest.raises(DataError, match=r"sequence 1 has shape \(3, 4\); expected \(steps >= 1, 5\)"):
        predict_sequences(lstm_model, [np.zeros((2, 5)), np.zeros((3, 4))])
    with pytest.raises(DataError, match="sequence 0 has shape"):
        predict_sequences(lstm_model, [np.zeros((0, 5))])
    with pytest.raises(DataError, match="NaN"):
        predict_sequences(lstm_model, [np.full((2, 5), np.nan)])


def test_evaluate_counts_real_steps(lstm_model):
    seqs = random_sequences([4, 9, 1], seed=6)
    preds = predict_sequences(lstm_model, seqs)
    agree = [SeqRecord(i, x, np.eye(2, dtype=np.float32)[p.argmax(1)]) for i, (x, p) in enumerate(zip(seqs, preds))]
    assert evaluate(lstm_model, agree) == 1.0
    flipped = [SeqRecord(r.id, r.features, r.targets[:, ::-1].copy()) for r in agree]
    assert evaluate(lstm_model, flipped) == 0.0
    with pytest.raises(DataError):
        evaluate(lstm_model, [SeqRecord(0, seqs[0])])


# --------------------------------------------------------------------------- loading


def test_load_keras_file_and_train_directory(tmp_path, lstm_model):
    lstm_model.save(tmp_path / "model.keras")
    x = random_sequences([6], seed=8)
    for path in (tmp_path / "model.keras", tmp_path):
        loaded = load_keras_model(path)
        np.testing.assert_allclose(predict_sequences(loaded, x)[0], predict_sequences(lstm_model, x)[0], atol=1e-6)


def test_load_errors_are_one_clear_line(tmp_path):
    import zipfile

    with pytest.raises(ModelError, match="no such file or directory"):
        load_keras_model(tmp_path / "missing.keras")
    with pytest.raises(ModelError, match="no model.keras in this directory"):
        load_keras_model(tmp_path)
    (tmp_path / "notes.h5").write_text("not a model")
    with pytest.raises(ModelError, match="not a Keras model file"):
        load_keras_model(tmp_path / "notes.h5")
    with zipfile.ZipFile(tmp_path / "broken.keras", "w") as z:
        z.writestr("config.json", "{not json")
    with pytest.raises(ModelError, match="cannot read the .keras archive"):
        load_keras_model(tmp_path / "broken.keras")
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "saved_model.pb").write_bytes(b"\x08\x01")
    with pytest.raises(ModelError, match="TensorFlow SavedModel.*model.save"):
        load_keras_model(tmp_path / "saved")


def test_weights_only_files_say_what_to_export(tmp_path, lstm_model):
    lstm_model.save_weights(tmp_path / "m.weights.h5")
    with pytest.raises(ModelError, match=r"holds only weights .*model\.save\('model\.keras'\)") as err:
        load_keras_model(tmp_path / "m.weights.h5")
    assert "\n" not in str(err.value)


def test_h5_full_model_loads_like_the_keras_file(tmp_path, lstm_model):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras calls .h5 legacy
        lstm_model.save(tmp_path / "m.h5")
    x = random_sequences([9, 2], seed=3)
    loaded = load_keras_model(tmp_path / "m.h5")
    for a, b in zip(predict_sequences(loaded, x), predict_sequences(lstm_model, x)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_lambda_models_are_refused_by_safe_mode(tmp_path):
    model = keras.Sequential([keras.Input((None, 5)), keras.layers.Lambda(lambda t: t * 2.0),
                              keras.layers.LSTM(3, return_sequences=True)])
    model.save(tmp_path / "lambda.keras")
    with pytest.raises(ModelError) as err:
        load_keras_model(tmp_path / "lambda.keras")
    assert "Lambda" in str(err.value) and "\n" not in str(err.value)


def test_many_to_one_models_give_one_row_per_sequence():
    model = keras.Sequential([keras.Input((None, 5)), keras.layers.LSTM(3), keras.layers.Dense(2)])
    seqs = random_sequences([3, 11, 1, 3], seed=4)
    out = predict_sequences(model, seqs, batch_size=3)
    assert [o.shape for o in out] == [(2,)] * 4
    for x, y in zip(seqs, out):  # equal lengths only share a batch: no padding reaches the last state
        np.testing.assert_allclose(y, np.asarray(model(x[None]))[0], atol=1e-6)


def test_models_whose_output_length_differs_are_refused():
    model = keras.Sequential([keras.Input((None, 5)), keras.layers.LSTM(3), keras.layers.RepeatVector(4),
                              keras.layers.LSTM(2, return_sequences=True)])
    with pytest.raises(ModelError, match="4 output steps for 6 input steps"):
        predict_sequences(model, random_sequences([6]))


def test_fixed_length_stateful_and_unrolled_models_predict_any_length():
    inp = keras.Input((12, 5), batch_size=3)
    h = keras.layers.LSTM(6, return_sequences=True, unroll=True, stateful=True)(inp)
    model = keras.Model(inp, keras.layers.TimeDistributed(keras.layers.Dense(2))(h))
    free = keras.Sequential([keras.Input((None, 5)), keras.layers.LSTM(6, return_sequences=True),
                             keras.layers.Dense(2)])
    free.set_weights(model.get_weights())
    seqs = random_sequences([1, 30, 12, 7], seed=5)
    for x, y in zip(seqs, predict_sequences(model, seqs)):
        np.testing.assert_allclose(y, eager(free, x), atol=1e-5)


def test_qa_targets_model_roundtrip_with_records():
    """SeqRecords go straight in; targets are ignored by predict_sequences."""
    model = tiny_model(units=(3,), seed=9)
    recs = [SeqRecord(i, x, qa_targets(x)) for i, x in enumerate(random_sequences([5, 2], seed=9))]
    assert [p.shape for p in predict_sequences(model, recs)] == [(5, 2), (2, 2)]
