"""models.architectures, models.compat and models.train: masking exactness, TimeDistributed fix, training."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from models.architectures import build_model  # noqa: E402
from models.batching import BucketedBatches  # noqa: E402
from models.compat import fix_time_distributed, has_time_distributed  # noqa: E402
from models.data import synthetic_sequences  # noqa: E402
from models.errors import ModelError  # noqa: E402
from models.predict import evaluate, predict_sequences  # noqa: E402
from models.train import SyntheticConfig, TrainConfig, qa_recipe, train, train_synthetic  # noqa: E402
from tests.helpers_models import qa_style_model, random_sequences, tiny_model  # noqa: E402

# --------------------------------------------------------------------------- architecture


def test_default_model_is_the_qa_architecture():
    model = build_model()
    kinds = [type(l).__name__ for l in model.layers]
    assert kinds == ["Masking", "LSTM", "LSTM", "Dense"]
    assert [l.units for l in model.layers[1:]] == [32, 8, 2]
    assert model.layers[-1].activation.__name__ == "sigmoid"
    assert tuple(model.inputs[0].shape) == (None, None, 5)
    assert model.count_params() == 6194  # 4864 + 1312 + 18, as printed in the Q&A
    assert model.loss == "categorical_crossentropy"
    assert not has_time_distributed(model)


@pytest.mark.parametrize("cell,kind", [("gru", "GRU"), ("simplernn", "SimpleRNN"), ("LSTM", "LSTM")])
def test_cells_units_and_heads_are_configurable(cell, kind):
    model = build_model(feature_size=3, output_size=1, cell=cell, units="4,3,2", activation="linear",
                        masking=False)
    assert [type(l).__name__ for l in model.layers] == [kind] * 3 + ["Dense"]
    assert model.loss == "mse"
    assert model(np.zeros((2, 7, 3), np.float32)).shape == (2, 7, 1)


def test_bad_architectures_are_refused():
    with pytest.raises(ModelError, match="unknown cell"):
        build_model(cell="transformer")
    with pytest.raises(ModelError, match="units"):
        build_model(units="32,x")
    with pytest.raises(ModelError, match="units"):
        build_model(units=(32, 0))


# --------------------------------------------------------------------------- pads never touch state or loss


def qa_records(lengths, seed=0):
    from models.data import SeqRecord, qa_targets

    return [SeqRecord(i, x, qa_targets(x)) for i, x in enumerate(random_sequences(lengths, seed=seed))]


def _unpadded_loss_and_grads(model, records):
    """Mean per-step loss over all real steps, each sequence run alone (no padding), and its gradients."""
    loss_fn = keras.losses.get(model.loss)
    total_steps = sum(len(r) for r in records)
    with tf.GradientTape() as tape:
        total = 0.0
        for r in records:
            y_pred = model(r.features[None], training=True)
            total += tf.reduce_sum(loss_fn(r.targets[None], y_pred))
        loss = total / total_steps
    return float(loss), tape.gradient(loss, model.trainable_variables)


def _padded_loss_and_grads(model, batch):
    x, y, *w = batch
    with tf.GradientTape() as tape:
        y_pred = model(x, training=True)
        loss = model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=w[0] if w else None)
    return float(loss), tape.gradient(loss, model.trainable_variables)


@pytest.mark.parametrize("masking", [True, False], ids=["masking-layer", "sample-weights"])
def test_padded_batch_gives_the_unpadded_loss_and_gradients(masking):
    records = qa_records([1, 7, 19, 33, 40], seed=11)
    model = tiny_model(masking=masking, seed=1)
    batches = BucketedBatches(records, batch_size=len(records), masking=masking, max_batch_steps=None)
    (batch,) = list(batches.epoch())
    assert batch[0].shape[1] == max(len(r) for r in records)  # really padded
    assert len(batch) == (2 if masking else 3)

    ref_loss, ref_grads = _unpadded_loss_and_grads(model, records)
    loss, grads = _padded_loss_and_grads(model, batch)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-4, atol=1e-6)

    # Control: the same padded batch with the pads counted is measurably different.
    if not masking:
        ones = (batch[0], batch[1], np.ones_like(batch[2]))
        assert abs(_padded_loss_and_grads(model, ones)[0] - ref_loss) > 1e-3


def test_train_on_batch_reports_the_real_steps_loss():
    records = qa_records([3, 30, 12, 8], seed=2)
    for masking in (True, False):
        model = tiny_model(masking=masking, seed=3)
        ref_loss, _ = _unpadded_loss_and_grads(model, records)
        (batch,) = list(BucketedBatches(records, 4, masking=masking, max_batch_steps=None).epoch())
        first = model.train_on_batch(*batch, return_dict=True)["loss"]  # loss before the update
        assert first == pytest.approx(ref_loss, rel=1e-5)


# --------------------------------------------------------------------------- TimeDistributed


def _functional_td_model():
    inp = keras.Input((None, 5))
    h = keras.layers.GRU(6, return_sequences=True)(inp)
    out = keras.layers.TimeDistributed(keras.layers.Dense(3, activation="softmax"))(h)
    return keras.Model(inp, out)


@pytest.mark.parametrize("make", [qa_style_model, _functional_td_model], ids=["sequential", "functional"])
def test_fix_time_distributed_keeps_outputs_for_any_length(make):
    model = make()
    fixed = fix_time_distributed(model)
    assert has_time_distributed(model) and not has_time_distributed(fixed)
    assert type(fixed) is type(model)
    for a, b in zip(model.get_weights(), fixed.get_weights()):
        np.testing.assert_array_equal(a, b)
    for length in (3, 17):
        x = random_sequences([length, length], seed=length)
        batch = np.stack(x)
        np.testing.assert_allclose(np.asarray(fixed(batch)), np.asarray(model(batch)), atol=1e-6)
        assert fixed.predict_on_batch(batch).shape == batch.shape[:2] + (model.outputs[0].shape[-1],)


def test_fixed_model_trains_across_lengths_and_keeps_compile_settings():
    model = qa_style_model()
    model.compile(loss="categorical_crossentropy", optimizer="adam")
    fixed = fix_time_distributed(model)
    assert fixed.compiled and fixed.loss == "categorical_crossentropy"
    rng = np.random.default_rng(0)
    for length in (5, 9, 5, 12):
        x = rng.random((4, length, 5), dtype=np.float32)
        y = keras.utils.to_categorical(rng.integers(0, 2, (4, length)), 2)
        assert np.isfinite(fixed.train_on_batch(x, y))
    assert fix_time_distributed(fixed) is fixed  # nothing left to fix


def test_fix_refuses_non_linear_models():
    inp = keras.Input((None, 5))
    a = keras.layers.LSTM(4, return_sequences=True)(inp)
    b = keras.layers.LSTM(4, return_sequences=True)(inp)
    out = keras.layers.TimeDistributed(keras.layers.Dense(2))(keras.layers.Concatenate()([a, b]))
    with pytest.raises(ModelError, match="not a linear chain"):
        fix_time_distributed(keras.Model(inp, out))


def test_qa_recipe_runs_on_current_keras():
    model, history = qa_recipe(steps_per_epoch=3, epochs=2, batch_size=8, min_len=3, max_len=12, seed=5,
                               verbose=0)
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()
    assert [type(l).__name__ for l in model.layers] == ["LSTM", "LSTM", "Dense"]
    out = predict_sequences(model, random_sequences([4, 30, 1]))
    assert [o.shape for o in out] == [(4, 2), (30, 2), (1, 2)]


# --------------------------------------------------------------------------- train()


def test_train_writes_model_and_manifest(tmp_path):
    records = synthetic_sequences(40, 5, 30, seed=1)
    fresh = synthetic_sequences(5, 40, 80, seed=2)
    config = TrainConfig(units=(6, 4), epochs=2, batch_size=8, verbose=0)
    result = train(records, config, out_dir=tmp_path, eval_sets={"long": fresh},
                   data_info={"source": "test"})
    assert (tmp_path / "model.keras").is_file()
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest == json.loads(json.dumps(result.manifest))
    assert manifest["feature_size"] == 5 and manifest["output_size"] == 2
    assert [l["type"] for l in manifest["layers"]] == ["Masking", "LSTM", "LSTM", "Dense"]
    assert manifest["lengths"]["min"] == min(len(r) for r in records)
    assert manifest["lengths"]["max"] == max(len(r) for r in records)
    assert manifest["lengths"]["mean"] == pytest.approx(np.mean([len(r) for r in records]), abs=0.01)
    assert set(manifest["metrics"]) >= {"loss", "accuracy"}
    assert 0 <= manifest["padding"]["waste_pct"] < manifest["padding"]["pad_to_max_waste_pct"]
    assert 0 <= manifest["eval_accuracy_long"] <= 1
    assert re.fullmatch(r"[0-9a-f]{16}", manifest["version"])
    assert manifest["versions"]["keras"] == keras.__version__
    assert manifest["versions"]["tensorflow"] == tf.__version__
    assert manifest["created"].endswith("+00:00")
    assert manifest["training"]["epochs"] == 2 and manifest["data"] == {"source": "test"}
    # the version is the one serving reports for this model
    from models.serving import load_step_model

    assert load_step_model(tmp_path).version == manifest["version"]


def test_train_without_masking_layer_uses_sample_weights(tmp_path):
    records = synthetic_sequences(24, 2, 20, seed=4)
    result = train(records, TrainConfig(cell="gru", units=(4,), masking=False, epochs=1, batch_size=8,
                                        verbose=0))
    assert "Masking" not in [type(l).__name__ for l in result.model.layers]
    assert result.manifest["padding"]["pads_excluded_by"] == "zero sample weights"
    assert result.manifest["mask_value"] is None


def test_train_refuses_mismatched_validation():
    from models.data import SeqRecord
    from models.errors import DataError

    records = synthetic_sequences(4, 2, 5)
    bad = [SeqRecord(0, np.zeros((3, 4), np.float32), np.zeros((3, 2), np.float32))]
    with pytest.raises(DataError, match="validation"):
        train(records, TrainConfig(epochs=1, verbose=0), eval_sets={"validation": bad})


@pytest.mark.slow
def test_default_synthetic_model_generalises_to_lengths_10_to_1000(tmp_path):
    """The default recipe (`streamer train --synthetic`) trained on lengths 10..100 predicts 10..1000."""
    result = train_synthetic(TrainConfig(verbose=0), SyntheticConfig(), out_dir=tmp_path)
    assert result.manifest["eval_accuracy_len_10_1000"] >= 0.97
    fresh = synthetic_sequences(100, 10, 1000, seed=12345)  # another fresh set, not the manifest's
    assert evaluate(result.model, fresh) >= 0.97


def test_training_dataset_keeps_batch_and_time_dynamic():
    """Keras would pin the time axis if the first two batches had one length; our signature never does."""
    records = qa_records([4] * 8 + [9, 9], seed=3)
    batches = BucketedBatches(records, batch_size=2, max_batch_steps=None, seed=0)
    x_spec, y_spec = batches.as_tf_dataset().element_spec
    assert x_spec.shape.as_list() == [None, None, 5] and y_spec.shape.as_list() == [None, None, 2]
    model = tiny_model(units=(3,), seed=0)
    for _ in range(3):  # several passes; whatever the order, every length trains
        history = model.fit(batches.as_tf_dataset(), steps_per_epoch=len(batches), epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"]).all()
