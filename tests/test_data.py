"""models.data and models.batching: the synthetic task, JSONL reading, padding and bucketing (no TensorFlow)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from models.batching import BucketedBatches, pad_to_max_waste, padded_steps, plan_batches
from models.data import (SeqRecord, post_pad, qa_targets, read_jsonl, step_mask, synthetic_sequences,
                         write_jsonl)
from models.errors import DataError, ModelError
from tests.helpers_models import write_lines

# --------------------------------------------------------------------------- synthetic task


def test_qa_targets_match_the_qa_code():
    rng = np.random.default_rng(0)
    x_train = rng.random((50, 30, 5))
    y_train = x_train[:, :, 0].copy()  # the Q&A's generator, verbatim
    for i in range(1, 5):
        y_train[:, i:] += x_train[:, :-i, i]
    expected = np.stack([~(y_train > 2.5), y_train > 2.5], axis=-1).astype(np.float32)
    ours = np.stack([qa_targets(x) for x in x_train])
    np.testing.assert_array_equal(ours, expected)


def test_qa_targets_short_sequences_have_absent_terms():
    x = np.full((3, 5), 0.9, dtype=np.float32)
    s = np.array([0.9, 1.8, 2.7])  # t=0: x0; t=1: + x[0,1]; t=2: + x[0,2]
    np.testing.assert_array_equal(qa_targets(x)[:, 1], (s > 2.5).astype(np.float32))
    assert qa_targets(x[:1]).shape == (1, 2)


def test_synthetic_sequences_are_seeded_and_in_range():
    a = synthetic_sequences(200, 10, 100, seed=3)
    b = synthetic_sequences(200, 10, 100, seed=3)
    c = synthetic_sequences(200, 10, 100, seed=4)
    assert all(np.array_equal(p.features, q.features) for p, q in zip(a, b))
    assert not all(len(p) == len(q) and np.array_equal(p.features, q.features) for p, q in zip(a, c))
    lengths = [len(r) for r in a]
    assert min(lengths) >= 10 and max(lengths) <= 100 and len(set(lengths)) > 30
    for r in a:
        assert r.features.dtype == np.float32 and r.features.shape[1] == 5
        assert r.features.min() >= 0 and r.features.max() < 1
        assert r.targets.shape == (len(r), 2)
        np.testing.assert_array_equal(r.targets.sum(axis=1), 1.0)
        np.testing.assert_array_equal(r.targets, qa_targets(r.features))
    positive = np.concatenate([r.targets[4:, 1] for r in a]).mean()
    assert 0.4 < positive < 0.6  # sum of 5 uniforms vs 2.5: balanced once all terms are present


def test_synthetic_lengths_are_inclusive_and_validated():
    assert {len(r) for r in synthetic_sequences(50, 7, 7)} == {7}
    assert {len(r) for r in synthetic_sequences(400, 1, 3, seed=1)} == {1, 2, 3}
    with pytest.raises(DataError):
        synthetic_sequences(5, 10, 5)
    with pytest.raises(DataError):
        synthetic_sequences(5, feature_size=4)
    assert isinstance(DataError("x"), ModelError) and isinstance(DataError("x"), ValueError)


# --------------------------------------------------------------------------- JSONL


def seq(n=3, f=5, o=2, **extra):
    rng = np.random.default_rng(n)
    d = {"features": rng.random((n, f)).round(3).tolist(), "targets": np.eye(o)[np.arange(n) % o].tolist()}
    d.update(extra)
    return d


def test_read_jsonl_roundtrip_ids_and_blank_lines(tmp_path):
    p = write_lines(tmp_path / "data.jsonl", [seq(3, id="a"), "", seq(1), seq(4, id=9), "   "])
    recs = read_jsonl(p)
    assert [r.id for r in recs] == ["a", 2, 9]  # default id: the 0-based line index
    assert [len(r) for r in recs] == [3, 1, 4]
    assert recs[0].features.dtype == np.float32 and recs[0].targets.shape == (3, 2)
    write_jsonl(recs, tmp_path / "again.jsonl")
    again = read_jsonl(tmp_path / "again.jsonl")
    assert all(np.array_equal(a.features, b.features) and a.id == b.id for a, b in zip(recs, again))


BAD_LINES = [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    (json.dumps({"targets": [[1, 0]]}), 'missing "features"'),
    (json.dumps({"features": [], "targets": []}), "non-empty list"),
    (json.dumps({"features": [[]], "targets": [[1, 0]]}), "non-empty list of numbers"),
    (json.dumps({"features": [1, 2, 3, 4, 5], "targets": [[1, 0]]}), "step 0 must be a non-empty list"),
    (json.dumps({"features": [[0, 0, 0, 0, "1"]], "targets": [[1, 0]]}), "non-number"),
    (json.dumps({"features": [[0, 0, 0, 0, True]], "targets": [[1, 0]]}), "non-number"),
    (json.dumps({"features": [[0, 0, 0, 0, None]], "targets": [[1, 0]]}), "non-number"),
    ('{"features": [[0, 0, 0, 0, NaN]], "targets": [[1, 0]]}', "NaN is not a number"),
    ('{"features": [[0, 0, 0, 0, Infinity]], "targets": [[1, 0]]}', "Infinity is not a number"),
    ('{"features": [[0, 0, 0, 0, 1e999]], "targets": [[1, 0]]}', "non-finite"),
    ('{"features": [[0, 0, 0, 0, 1e300]], "targets": [[1, 0]]}', "too large for float32"),
    (json.dumps({"features": [[0] * 5, [0] * 4], "targets": [[1, 0], [0, 1]]}), "step 1 has 4 values, expected 5"),
    (json.dumps({"features": [[0] * 6], "targets": [[1, 0]]}), "has 6 values, expected 5"),  # vs line 1
    (json.dumps({"features": [[0] * 5], "targets": [[1, 0, 0]]}), "has 3 values, expected 2"),  # vs line 1
    (json.dumps({"features": [[0] * 5] * 3, "targets": [[1, 0]] * 2}), '"targets" has 2 steps but "features" has 3'),
    (json.dumps({"features": [[0] * 5]}), 'missing "targets"'),
    (json.dumps({"id": [1], "features": [[0] * 5], "targets": [[1, 0]]}), '"id" must be a string or an integer'),
]


@pytest.mark.parametrize("line,why", BAD_LINES, ids=[w for _, w in BAD_LINES])
def test_bad_lines_are_refused_with_their_line_number(tmp_path, line, why):
    p = write_lines(tmp_path / "data.jsonl", [seq(2), "", line, seq(3)])
    with pytest.raises(DataError) as err:
        read_jsonl(p)
    message = str(err.value)
    assert message.startswith("data.jsonl line 3: "), message
    assert why in message, message
    assert "\n" not in message


def test_missing_empty_and_non_utf8_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="is a directory"):
        read_jsonl(tmp_path)
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="no sequences"):
        read_jsonl(tmp_path / "empty.jsonl")
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DataError, match="not UTF-8"):
        read_jsonl(tmp_path / "bin.jsonl")


def test_prediction_reader_targets_optional_and_feature_size():
    text = "\n".join([json.dumps({"features": [[0.5] * 5]}), json.dumps(seq(2, id="x"))]) + "\n"
    recs = read_jsonl(io.StringIO(text), targets="optional")
    assert recs[0].targets is None and recs[1].targets.shape == (2, 2) and recs[1].id == "x"
    with pytest.raises(DataError, match=r"line 1: .*has 5 values, expected 3"):
        read_jsonl(io.StringIO(text), targets="optional", feature_size=3)
    bad = json.dumps({"features": [[0.5] * 5], "targets": [[1, 0], [0, 1]]})
    with pytest.raises(DataError, match="line 1: .*targets"):
        read_jsonl(io.StringIO(bad), targets="optional")
    assert read_jsonl(io.StringIO(bad), targets="ignored")[0].targets is None


# --------------------------------------------------------------------------- padding and bucketing


def test_post_pad_and_mask():
    a, b = np.ones((2, 3), np.float32), 2 * np.ones((4, 3), np.float32)
    x = post_pad([a, b])
    assert x.shape == (2, 4, 3)
    np.testing.assert_array_equal(x[0, :2], a)
    np.testing.assert_array_equal(x[0, 2:], 0)  # pads after the real steps
    np.testing.assert_array_equal(step_mask([2, 4]), [[1, 1, 0, 0], [1, 1, 1, 1]])


def records_with_lengths(lengths, f=2, o=2):
    return [SeqRecord(i, np.full((n, f), i + 1, np.float32), np.ones((n, o), np.float32))
            for i, n in enumerate(lengths)]


def test_every_epoch_covers_each_sequence_once_in_a_new_order():
    lengths = np.random.default_rng(0).integers(1, 60, 300)
    plans = [plan_batches(lengths, 16, np.random.default_rng([7, e]), pool_batches=4) for e in range(5)]
    for plan in plans:
        assert sorted(np.concatenate(plan).tolist()) == list(range(300))
        assert max(len(b) for b in plan) <= 16
    orders = [tuple(tuple(sorted(b)) for b in plan) for plan in plans]
    assert len(set(orders)) == 5  # no two epochs see the same batches in the same order
    memberships = [frozenset(tuple(sorted(b)) for b in plan) for plan in plans]
    assert len(set(memberships)) == 5  # and bucket membership is reshuffled too


def test_batches_are_post_padded_and_order_changes_per_epoch():
    recs = records_with_lengths([3, 9, 4, 8, 5, 7, 6, 2] * 4)
    batches = BucketedBatches(recs, batch_size=4, masking=True, seed=1)
    assert len(batches) == 8
    first = [(x.shape, x[:, 0, 0].tolist()) for x, _ in batches.epoch()]
    second = [(x.shape, x[:, 0, 0].tolist()) for x, _ in batches.epoch()]
    assert first != second
    for x, y in batches.epoch():
        for row in range(len(x)):
            n = len(recs[int(x[row, 0, 0]) - 1])
            assert (x[row, :n] != 0).all() and (x[row, n:] == 0).all()  # real steps first, zeros after
            assert (y[row, n:] == 0).all()
    assert batches.epochs_served == 3


def test_sample_weight_route_zero_on_pads_mean_over_real_steps():
    recs = records_with_lengths([2, 5, 3])
    batches = BucketedBatches(recs, batch_size=3, masking=False, seed=0)
    (x, y, w), = list(batches.epoch())
    assert w.shape == x.shape[:2]
    lengths = (x[:, :, 0] != 0).sum(axis=1)
    np.testing.assert_array_equal(w > 0, step_mask(lengths, x.shape[1]) > 0)
    # "sum over batch size" divides by B*T: these weights turn it into the mean over real steps
    assert w.sum() == pytest.approx(w.size)


def test_bucketing_cuts_padding_on_long_tailed_lengths():
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(3.5, 1.0, 4000).astype(int), 1, 5000)  # long tail
    naive = pad_to_max_waste(lengths)
    plan = plan_batches(lengths, 64, np.random.default_rng(1))
    bucketed = 100 * (1 - lengths.sum() / padded_steps(lengths, plan))
    assert naive > 90
    assert bucketed < naive / 5, (bucketed, naive)
    batches = BucketedBatches(records_with_lengths(lengths[:500]), batch_size=32)
    for _ in batches.epoch():
        pass
    assert 0 <= batches.waste_pct < batches.pad_to_max_waste_pct / 3


def test_batches_refuse_bad_input():
    with pytest.raises(DataError):
        BucketedBatches([], batch_size=4)
    with pytest.raises(DataError):
        BucketedBatches(records_with_lengths([3]), batch_size=0)
    with pytest.raises(DataError, match="targets"):
        BucketedBatches([SeqRecord(0, np.ones((2, 2), np.float32))])
