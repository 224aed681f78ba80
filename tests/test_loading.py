"""models.keras_files, models.graph and models.rebuild: the cases the model zoo does not reach.

(The zoo, tests/test_zoo.py, runs ~50 models saved by another process through the CLI; here the
edge cases are built in-process and checked directly.)
"""

from __future__ import annotations

import json
import warnings
import zipfile

import numpy as np
import pytest

keras = pytest.importorskip("keras")
L = keras.layers

from models.errors import ConversionError, ModelError  # noqa: E402
from models.graph import flat_layers, functional_chain  # noqa: E402
from models.keras_files import classify, load_keras_model  # noqa: E402
from models.rebuild import needs_rebuild, rebuild  # noqa: E402
from tests.helpers_models import eager, random_sequences  # noqa: E402


def _lstm(**kw):
    return L.LSTM(4, return_sequences=True, **kw)


def test_classify_reads_the_bytes_not_the_name(tmp_path):
    model = keras.Sequential([keras.Input((None, 3)), _lstm()])
    model.save(tmp_path / "m.keras")
    (tmp_path / "m.keras").rename(tmp_path / "m.bin")
    assert classify(tmp_path / "m.bin") == ("keras", tmp_path / "m.bin")
    with pytest.raises(ModelError, match="rename it to end in .keras"):
        load_keras_model(tmp_path / "m.bin")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(tmp_path / "m.h5")
    (tmp_path / "m.h5").rename(tmp_path / "m.model")
    assert classify(tmp_path / "m.model")[0] == "h5"
    assert load_keras_model(tmp_path / "m.model").layers[0].units == 4


def test_tf_keras_archives_and_time_major_are_refused_with_what_to_do(tmp_path):
    with zipfile.ZipFile(tmp_path / "old.keras", "w") as z:
        z.writestr("config.json", json.dumps({"class_name": "Sequential", "config": {"layers": []}}))
        z.writestr("metadata.json", json.dumps({"keras_version": "2.15.0"}))
    with pytest.raises(ModelError, match=r"tf\.keras/Keras 2\.15\.0.*model\.save\('model\.h5'\)"):
        load_keras_model(tmp_path / "old.keras")
    h5py = pytest.importorskip("h5py")
    model = keras.Sequential([keras.Input((None, 3)), _lstm(name="tm")])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(tmp_path / "tm.h5")
    with h5py.File(tmp_path / "tm.h5", "r+") as f:  # what a Keras 2 time-major model stores
        config = json.loads(f.attrs["model_config"])
        config["config"]["layers"][-1]["config"]["time_major"] = True
        f.attrs["model_config"] = json.dumps(config)
    with pytest.raises(ModelError, match="'tm' uses time_major=True"):
        load_keras_model(tmp_path / "tm.h5")


def test_h5_file_is_read_from_a_copy(tmp_path):
    model = keras.Sequential([keras.Input((None, 3)), _lstm()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(tmp_path / "m.h5")
    before = (tmp_path / "m.h5").read_bytes()
    load_keras_model(tmp_path / "m.h5")
    assert (tmp_path / "m.h5").read_bytes() == before


def test_functional_masking_chain_skips_the_mask_ops():
    inp = keras.Input((None, 3))
    x = L.Masking(0.0, name="m")(inp)
    x = L.GRU(4, return_sequences=True, name="g")(x)
    model = keras.Model(inp, L.Dense(2, name="d")(x))
    kinds = {e["class_name"] for e in model.get_config()["layers"]}
    assert {"NotEqual", "Any"} <= kinds  # Keras stores the mask as operation nodes
    assert [layer.name for layer in functional_chain(model)] == ["m", "g", "d"]


@pytest.mark.parametrize("value", [5.0, None])
def test_an_explicit_mask_that_is_not_the_masking_layers_is_refused(value):
    inp = keras.Input((None, 3))
    x = L.Masking(0.0)(inp) if value is None else inp
    mask = keras.ops.any(keras.ops.not_equal(inp, 5.0 if value else 1.0), axis=-1)
    model = keras.Model(inp, L.LSTM(2, return_sequences=True, name="l")(x, mask=mask))
    with pytest.raises(ConversionError, match="'l' is called with a mask computed by operation .* not the mask"):
        functional_chain(model)


def test_operations_between_layers_are_refused():
    inp = keras.Input((None, 3))
    x = keras.ops.tanh(L.Dense(4)(inp))
    model = keras.Model(inp, L.Dense(2, name="out")(x))
    with pytest.raises(ConversionError, match="'out' takes the result of operation 'tanh'"):
        functional_chain(model)


def test_rebuild_frees_batch_time_state_and_unroll_and_flattens_nesting():
    inner = keras.Sequential([keras.Input((8, 5), batch_size=2), L.Masking(0.0),
                              _lstm(stateful=True, unroll=True), L.TimeDistributed(L.Dense(3))])
    inp = keras.Input((8, 5), batch_size=2)
    model = keras.Model(inp, L.Dense(2)(inner(inp)))
    assert needs_rebuild(model)
    free = rebuild(model)
    assert tuple(free.inputs[0].shape) == (None, None, 5) and not needs_rebuild(free)
    assert [type(layer).__name__ for layer in flat_layers(free)] == ["Masking", "LSTM", "Dense", "Dense"]
    x = random_sequences([8], seed=2)[0]
    x[3] = 0.0  # a masked step
    want = np.asarray(model(np.stack([x, x])))[0]  # the stateful model's first call starts from zeros
    np.testing.assert_allclose(eager(free, x), want, atol=1e-6)
    assert eager(free, np.tile(x, (4, 1))).shape == (32, 2)  # any length now


def test_models_that_already_run_on_any_shape_are_not_rebuilt():
    from models.rebuild import free_model

    model = keras.Sequential([keras.Input((None, 5)), _lstm(), L.Dense(2)])
    assert not needs_rebuild(model) and free_model(model) is model
