"""Record-size rules (streamer.limits): dead letters cut to fit, prediction records bounded and split,
the changelog record bound. Broker-free; the real broker's limits are exercised in test_serve_hostile.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from streamer import limits, schema
from streamer.engine import Outputs
from streamer.schema import dead_letter, encode_dead_letter, payload_bytes
from streamer.state import StreamRecord

SOURCE = {"topic": "events", "partition": 7, "offset": 123456789}
MB = 1_000_000


def _fitted(payload, budget, code=schema.INVALID_JSON, detail="oops"):
    dl = limits.fit_dead_letter(code, detail, SOURCE, payload, budget)
    size = len(encode_dead_letter(dl))
    assert size <= budget, f"dead letter of {size} bytes over its budget of {budget}"
    return dl


@pytest.mark.parametrize("payload", [
    b'"' * 700_000,  # every byte becomes two: \"
    b"\xff" * 800_000,  # invalid UTF-8: base64 grows it by a third
    b"\x00" * 300_000,  # valid UTF-8, but each NUL is written \u0000
    "é".encode() * 400_000,  # two bytes each, written as \u00e9 (six)
    "\U0001F600".encode() * 200_000,  # four bytes each, written as a surrogate pair (twelve)
], ids=["quotes", "invalid-utf8", "nul", "latin", "emoji"])
def test_a_dead_letter_that_would_not_fit_keeps_the_longest_payload_prefix_that_does(payload):
    whole = dead_letter(schema.INVALID_JSON, "oops", SOURCE, payload)
    assert len(encode_dead_letter(whole)) > MB  # the problem: bigger than a 1 MB topic allows
    dl = _fitted(payload, MB)
    assert dl["payload_truncated"] is True and dl["payload_bytes"] == len(payload)
    kept = payload_bytes(dl)
    assert payload.startswith(kept)
    assert len(encode_dead_letter(dead_letter(schema.INVALID_JSON, "oops", SOURCE, payload, keep=len(kept) + 8))) > MB
    assert dl["error"] == schema.INVALID_JSON and dl["source"] == SOURCE and dl["detail"] == "oops"


def test_a_dead_letter_that_fits_is_untouched_and_every_code_is_cut_alike():
    assert limits.fit_dead_letter("invalid_json", "d", SOURCE, b"{x", 10_000) == dead_letter("invalid_json", "d",
                                                                                          SOURCE, b"{x")
    for code in schema.ERROR_CODES:
        dl = _fitted(b"z" * 50_000, 20_000, code=code)
        assert dl["payload_truncated"] is True


def test_fitting_is_exact_on_random_payloads():
    rng = np.random.default_rng(0)
    for _ in range(40):
        n = int(rng.integers(1, 30_000))
        kind = rng.integers(0, 3)
        raw = (rng.integers(0, 256, n, dtype=np.uint8).tobytes() if kind == 0 else
               bytes(rng.choice(list(b'"\\\x00a\n\x7f'), n)) if kind == 1 else
               "".join(map(chr, rng.integers(32, 0x2FFF, n // 3 + 1))).encode())
        budget = int(rng.integers(600, 40_000))
        dl = _fitted(raw, budget)
        assert raw.startswith(payload_bytes(dl))
        if not dl.get("payload_truncated"):
            assert payload_bytes(dl) == raw


def test_a_long_detail_is_cut_and_a_tiny_budget_still_gives_a_valid_dead_letter():
    dl = dead_letter("internal_error", "x" * 5000, SOURCE, b"{}")
    assert len(dl["detail"]) == schema.DETAIL_CHARS and dl["detail"].endswith("...")
    tiny = _fitted(b"y" * 1000, 400, detail="\U0001F600" * 900)  # the detail alone is far over the budget
    assert tiny["detail"] == "" and tiny["payload_truncated"] is True and b"y" * 1000 != payload_bytes(tiny)
    json.loads(encode_dead_letter(tiny))


def test_dead_letter_keys_are_the_original_key_unless_it_is_longer_than_any_stream_id():
    assert limits.dead_letter_key(b"s-1") == b"s-1"
    assert limits.dead_letter_key("\U0001F600".encode() * 256) is not None
    assert limits.dead_letter_key(b"k" * 1025) is None
    assert limits.dead_letter_key(None) is None


# --------------------------------------------------------------------------- predictions


def _outputs(stream_id: str, steps: int, outputs: int, value: float, ts=None) -> Outputs:
    preds = np.full((steps, outputs), value, np.float32)
    return Outputs("v" * 16, [stream_id], np.array([2**53 - steps], np.int64), [ts], np.array([True]),
                   np.array([0]), np.array([steps]), preds, np.arange(2**53 - steps, 2**53, dtype=np.int64))


@pytest.mark.parametrize("outputs", [1, 2, 7])
def test_a_record_of_cap_steps_fits_even_for_the_worst_id_ts_and_values(outputs):
    limit = limits.PredictionLimit(50_000, outputs, "v" * 16)
    cap = limit.uniform_cap()
    assert cap >= 1
    worst_id = "\U0001F600" * schema.MAX_STREAM_ID_CHARS
    for value in (-1.1754944e-38, -3.4028235e38, float("nan"), 1.0 / 3):
        out = _outputs(worst_id, cap, outputs, value, ts=1.2345678901234567e15)
        (line,) = out.json_lines()
        size = len(line.encode()) + len(worst_id.encode()) + limits.RECORD_OVERHEAD
        assert size <= limit.record_bytes
        assert limit.caps([worst_id])[0] >= cap


def test_splitting_keeps_every_prediction_in_order_with_its_step():
    rng = np.random.default_rng(1)
    preds = rng.random((23, 2)).astype(np.float32)
    out = Outputs("m", ["a", "b", "c"], np.array([0, 5, 40]), [None, 7, None], np.array([True, False, True]),
                  np.array([0, 10, 11]), np.array([10, 1, 12]), preds,
                  np.r_[np.arange(0, 10), [5], np.arange(40, 52)].astype(np.int64))
    split = out.split(4)
    assert [len(r.get("predictions", [0])) for r in split.records()] == [4, 4, 2, 1, 4, 4, 4]
    assert [r["step"] for r in split.records()] == [0, 4, 8, 5, 40, 44, 48]
    assert [r["stream_id"] for r in split.records()] == list("aaabccc")
    assert [r.get("ts") for r in split.records()] == [None, None, None, 7, None, None, None]
    rows = [p for r in split.records() for p in r.get("predictions", [r.get("prediction")])]
    np.testing.assert_array_equal(np.array(rows, np.float32), preds)
    assert out.split(100) is out


def test_the_changelog_bound_holds_for_the_largest_record():
    bound = limits.changelog_record_bytes("0123456789abcdef", 80)
    record = StreamRecord("\U0001F600" * 256, np.full(80, -1e-38, np.float32), 2**53 - 1, 1.7e9 + 0.123456789,
                          "0123456789abcdef", partition=2**31 - 1)
    assert len(record.to_bytes()) + 1024 + limits.RECORD_OVERHEAD <= bound
