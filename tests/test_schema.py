"""Event schema: every malformed message becomes exactly one rejection with a stable code."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest

from streamer import schema
from streamer.schema import decode, dead_letter, payload_bytes

F = 3
LIMIT = 1000
GOOD = {"stream_id": "a", "step": 0, "features": [0.1, 2, -3.5]}


def enc(obj) -> bytes:
    return json.dumps(obj).encode()


def with_(**changes) -> bytes:
    obj = dict(GOOD)
    for k, v in changes.items():
        if v is ...:
            obj.pop(k, None)
        else:
            obj[k] = v
    return enc(obj)


BAD = [
    (b"x" * (LIMIT + 1), schema.MESSAGE_TOO_LARGE),
    (b'{"stream_id": "a", "features": [1, 2, 3], "x": "\xff"}', schema.INVALID_UTF8),
    (b'{"stream_id": "a", "features": [1, 2, 3]', schema.INVALID_JSON),
    (b"", schema.INVALID_JSON),
    (b"[1, 2, 3]", schema.NOT_AN_OBJECT),
    (b'"just a string"', schema.NOT_AN_OBJECT),
    (b"null", schema.NOT_AN_OBJECT),
    (with_(stream_id=...), schema.MISSING_STREAM_ID),
    (with_(stream_id=None), schema.MISSING_STREAM_ID),
    (with_(stream_id=""), schema.INVALID_STREAM_ID),
    (with_(stream_id=17), schema.INVALID_STREAM_ID),
    (with_(stream_id=["a"]), schema.INVALID_STREAM_ID),
    (with_(stream_id="s" * 257), schema.INVALID_STREAM_ID),
    (b'{"stream_id": "\\ud800", "features": [1, 2, 3]}', schema.INVALID_STREAM_ID),  # a lone surrogate
    (b'{"stream_id": "a\\udfff", "features": [1, 2, 3]}', schema.INVALID_STREAM_ID),
    (with_(features=...), schema.MISSING_FEATURES),
    (with_(features=None), schema.MISSING_FEATURES),
    (with_(features=[]), schema.INVALID_FEATURES),
    (with_(features="1,2,3"), schema.INVALID_FEATURES),
    (with_(features={"a": 1}), schema.INVALID_FEATURES),
    (with_(features=[1, 2]), schema.WRONG_FEATURE_COUNT),
    (with_(features=[1, 2, 3, 4]), schema.WRONG_FEATURE_COUNT),
    (with_(features=[1, "2", 3]), schema.INVALID_FEATURES),
    (with_(features=[1, True, 3]), schema.INVALID_FEATURES),
    (with_(features=[True, False, True]), schema.INVALID_FEATURES),
    (with_(features=[1, None, 3]), schema.INVALID_FEATURES),
    (with_(features=[[1, 2, 3], [4, 5]]), schema.RAGGED_CHUNK),
    (with_(features=[[1, 2], [4, 5]]), schema.WRONG_FEATURE_COUNT),
    (with_(features=[[1, 2, 3], 4]), schema.INVALID_FEATURES),
    (with_(features=[[1, 2, 3], [4, False, 6]]), schema.INVALID_FEATURES),
    (with_(features=[[1, 2, 3], [[4], 5, 6]]), schema.INVALID_FEATURES),
    (b'{"stream_id": "a", "features": [1, NaN, 3]}', schema.NON_FINITE_FEATURES),
    (b'{"stream_id": "a", "features": [1, Infinity, 3]}', schema.NON_FINITE_FEATURES),
    (b'{"stream_id": "a", "features": [[1, 2, 3], [1, -Infinity, 3]]}', schema.NON_FINITE_FEATURES),
    (b'{"stream_id": "a", "features": [1, 1e400, 3]}', schema.NON_FINITE_FEATURES),
    (b'{"stream_id": "a", "features": [1, 1e39, 3]}', schema.NON_FINITE_FEATURES),  # beyond float32
    (enc({"stream_id": "a", "features": [1, 10**400, 3]}), schema.NON_FINITE_FEATURES),
    (with_(step=-1), schema.INVALID_STEP),
    (with_(step=1.5), schema.INVALID_STEP),
    (with_(step=2.0), schema.INVALID_STEP),
    (with_(step="3"), schema.INVALID_STEP),
    (with_(step=True), schema.INVALID_STEP),
    (with_(step=2**53), schema.INVALID_STEP),
    (b'{"stream_id": "a", "step": NaN, "features": [1, 2, 3]}', schema.INVALID_STEP),
    (with_(reset="yes"), schema.INVALID_RESET),
    (with_(reset=1), schema.INVALID_RESET),
    (with_(end=0), schema.INVALID_END),
    (with_(end="true"), schema.INVALID_END),
    (with_(ts="2024-01-01"), schema.INVALID_TS),
    (with_(ts=-5), schema.INVALID_TS),
    (with_(ts=True), schema.INVALID_TS),
    (with_(ts=10**400), schema.INVALID_TS),
    (b'{"stream_id": "a", "ts": Infinity, "features": [1, 2, 3]}', schema.INVALID_TS),
    (b'{"stream_id": "a", "features": ' + b"[" * 100000 + b"]" * 100000 + b"}", schema.MESSAGE_TOO_LARGE),
]


@pytest.mark.parametrize("raw,code", BAD, ids=[f"{i}-{c}" for i, (_, c) in enumerate(BAD)])
def test_each_bad_message_is_one_rejection_and_neighbours_survive(raw, code):
    messages = [enc(GOOD), raw, enc({**GOOD, "stream_id": "b"})]
    events, rejected = decode(messages, F, max_message_bytes=LIMIT)
    assert [(r.index, r.code) for r in rejected] == [(1, code)]
    assert rejected[0].detail
    assert events.stream_ids == ["a", "b"]
    assert events.index.tolist() == [0, 2]
    np.testing.assert_array_equal(events.features, np.array([[0.1, 2, -3.5]] * 2, np.float32))


def test_deeply_nested_json_under_the_size_limit_is_invalid_json_not_a_crash():
    raw = b"[" * 200000 + b"]" * 200000
    _, rejected = decode([raw], F, max_message_bytes=10**6)
    assert [r.code for r in rejected] == [schema.INVALID_JSON]


def test_kafka_tombstones_and_buffers_are_messages_too():
    events, rejected = decode([None, bytearray(enc(GOOD)), memoryview(b"{"), 17], F)
    assert [(r.index, r.code) for r in rejected] == [(0, schema.INVALID_JSON), (2, schema.INVALID_JSON),
                                                     (3, schema.INVALID_JSON)]
    assert events.stream_ids == ["a"]
    assert dead_letter("invalid_json", "x", {}, None)["payload"] == ""
    assert dead_letter("invalid_json", "x", {}, memoryview(b"{"))["payload"] == "{"


def test_valid_shapes_and_optional_fields():
    messages = [
        enc({"stream_id": "a", "features": [1, 2, 3]}),
        enc({"stream_id": "b", "step": 7, "features": [[1, 2, 3], [4, 5, 6]], "reset": True, "ts": 1.5e12}),
        enc({"stream_id": "c", "step": None, "reset": None, "end": True, "ts": None, "extra": {"x": 1},
             "features": [1.0, -2.0, 3]}),
        enc({"stream_id": "é" * 256, "features": [[0, 0, 0]], "ts": 1718000000000}),
        enc({"stream_id": "big", "features": [1e38, -1e38, 2**60]}),
    ]
    events, rejected = decode(messages, F)
    assert rejected == []
    assert events.stream_ids == ["a", "b", "c", "é" * 256, "big"]
    assert events.steps.tolist() == [-1, 7, -1, -1, -1]
    assert events.counts.tolist() == [1, 2, 1, 1, 1]
    assert events.chunk.tolist() == [False, True, False, True, False]
    assert events.reset.tolist() == [False, True, False, False, False]
    assert events.end.tolist() == [False, False, True, False, False]
    assert events.ts == [None, 1.5e12, None, 1718000000000, None]
    assert events.features.shape == (6, F) and events.features.dtype == np.float32


def test_partitions_follow_the_valid_events():
    messages = [enc(GOOD), b"nope", enc({**GOOD, "stream_id": "z"})]
    events, _ = decode(messages, F, partitions=np.array([4, 5, 6]))
    assert events.partitions.tolist() == [4, 6]


def test_str_messages_are_accepted_and_measured_in_utf8_bytes():
    raw = json.dumps({"stream_id": "é" * 40, "features": [1, 2, 3]}, ensure_ascii=False)
    assert len(raw) <= 90 < len(raw.encode())
    _, rejected = decode([raw], F, max_message_bytes=90)
    assert [r.code for r in rejected] == [schema.MESSAGE_TOO_LARGE]


def test_dead_letter_shape_text_payload():
    dl = dead_letter("invalid_json", "oops", {"file": "e.jsonl", "line": 3}, b'{"a": ')
    assert dl == {"error": "invalid_json", "detail": "oops", "source": {"file": "e.jsonl", "line": 3},
                  "payload": '{"a": '}
    json.dumps(dl)


def test_dead_letter_invalid_utf8_payload_is_base64():
    raw = b'{"stream_id": "\xff\xfe"}'
    dl = dead_letter("invalid_utf8", "bad", {"topic": "t", "partition": 0, "offset": 9}, raw)
    assert dl["payload_encoding"] == "base64"
    assert base64.b64decode(dl["payload"]) == raw
    assert payload_bytes(dl) == raw


def test_dead_letter_oversized_payload_is_truncated_at_a_character_boundary():
    raw = ("é" * 5000).encode()
    dl = dead_letter("message_too_large", "big", {"index": 0}, raw)
    assert dl["payload_truncated"] is True
    assert "payload_encoding" not in dl
    assert dl["payload"] == "é" * (schema.DEAD_LETTER_PAYLOAD_LIMIT // 2)


def test_error_codes_are_stable_snake_case_and_unique():
    assert len(set(schema.ERROR_CODES)) == len(schema.ERROR_CODES)
    for code in schema.ERROR_CODES:
        assert re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", code)


# --------------------------------------------------------------------------- bulk path == careful path

_ODD_VALUES = [None, True, False, 0, -1, 1, 2**53 - 1, 2**53, 2**53 + 1, 10**400, -0.0, 0.5, 1e300, "x", "",
               [], [1], {}, "NaN", "Infinity", "-Infinity", "é", "a" * 256, "a" * 257]


def _fuzz_message(rng) -> bytes:
    """Mostly well-formed single steps, with every kind of damage now and then."""
    sid = rng.choice(["s-1", "s-2", "s-3", "é-ü", "x" * 256])
    obj: dict = {"stream_id": sid, "features": [round(float(v), 4) for v in rng.normal(0, 1, F)]}
    if rng.random() < 0.5:
        obj["step"] = int(rng.integers(0, 50))
    if rng.random() < 0.3:
        obj["ts"] = int(rng.integers(0, 2**41)) if rng.random() < 0.7 else float(rng.random() * 1e12)
    for name in ("reset", "end"):
        if rng.random() < 0.1:
            obj[name] = bool(rng.random() < 0.5) if rng.random() < 0.8 else None
    roll = rng.random()
    if roll < 0.1:  # a chunk, sometimes ragged or of the wrong width
        k = int(rng.integers(1, 4))
        obj["features"] = [[float(v) for v in rng.normal(0, 1, F)] for _ in range(k)]
        if rng.random() < 0.3:
            obj["features"][-1] = obj["features"][-1][:-1]
    elif roll < 0.35:  # one field gets an odd value, or goes missing
        name = rng.choice(["stream_id", "features", "step", "reset", "end", "ts"])
        value = _ODD_VALUES[int(rng.integers(len(_ODD_VALUES)))]
        if rng.random() < 0.15:
            obj.pop(name, None)
        elif name == "features" and rng.random() < 0.5:
            obj["features"][int(rng.integers(F))] = value  # one feature odd
        else:
            obj[name] = value
    text = json.dumps(obj, ensure_ascii=bool(rng.random() < 0.5))
    text = text.replace('"NaN"', "NaN").replace('"Infinity"', "Infinity").replace('"-Infinity"', "-Infinity")
    raw = text.encode()
    roll = rng.random()
    if roll < 0.03:
        raw = b" " + raw
    elif roll < 0.06:
        raw = raw + b" \n"
    elif roll < 0.08:
        raw = raw + b"x"
    elif roll < 0.10:
        raw = raw[: int(rng.integers(len(raw)))]
    elif roll < 0.11:
        raw = raw.replace(b"s-", b"\xff-")
    elif roll < 0.12:
        raw = b"[" + raw + b"]"
    elif roll < 0.13:
        raw = raw + b" " * LIMIT
    return raw


def _same_decode(got, want) -> None:
    (ev, rej), (ev_ref, rej_ref) = got, want
    assert rej == rej_ref
    assert ev.stream_ids == ev_ref.stream_ids
    assert [(type(t), t) for t in ev.ts] == [(type(t), t) for t in ev_ref.ts]
    for name in ("steps", "counts", "chunk", "reset", "end", "index"):
        a, b = getattr(ev, name), getattr(ev_ref, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    assert ev.features.shape == ev_ref.features.shape and ev.features.dtype == np.float32
    assert ev.features.tobytes() == ev_ref.features.tobytes()  # bit for bit


@pytest.mark.parametrize("seed", range(6))
def test_bulk_decode_equals_careful_decode_on_a_fuzzed_corpus(seed):
    """Bytes polls take the column-wise bulk path; bytearrays are checked one by one (`_decode_one`).
    Both must give the same events and the same dead letters, whatever the mix."""
    rng = np.random.default_rng(seed)
    for size in (1, 7, 12, 13, 60, 400):
        messages = [_fuzz_message(rng) for _ in range(size)]
        parts = rng.integers(0, 4, size)
        got = decode(messages, F, LIMIT, partitions=parts)
        want = decode([bytearray(m) for m in messages], F, LIMIT, partitions=parts)
        _same_decode(got, want)
        assert np.array_equal(got[0].partitions, want[0].partitions)


@pytest.mark.parametrize("seed", range(3))
def test_orjson_and_the_json_module_give_the_same_events_and_dead_letters(seed, monkeypatch):
    """orjson parses what it can (both paths); without it (or where it refuses) the json module does.
    Whatever parses a message, the events and the dead letters (codes and details) are the same."""
    pytest.importorskip("orjson")
    from streamer import schema

    rng = np.random.default_rng(100 + seed)
    polls = [[_fuzz_message(rng) for _ in range(size)] for size in (1, 12, 60, 400)]
    polls.append([with_(features=[10**400, 0, 0]), with_(ts=2**64), b'{"stream_id": "\\ud800x", "features": [1,2,3]}',
                  b'{"stream_id": "a", "features": [1, 2, 3]}' + b" " * 3, b'[' * 2000 + b']' * 2000] * 4)
    fast = [decode(m, F, LIMIT) for m in polls]
    fast_careful = [decode([bytearray(x) for x in m], F, LIMIT) for m in polls]
    monkeypatch.setattr(schema, "_orjson_loads", None)
    for m, got, got_careful in zip(polls, fast, fast_careful):
        want = decode(m, F, LIMIT)
        _same_decode(got, want)
        _same_decode(got_careful, want)
        assert [(r.code, r.detail) for r in got[1]] == [(r.code, r.detail) for r in want[1]]


def test_bulk_decode_handles_edge_values_like_the_careful_path():
    cases = [
        with_(ts=2**53), with_(ts=2**53 + 1), with_(ts=float(2**53)), with_(ts=-0.0), with_(ts=0),
        with_(step=2**53 - 1), with_(step=2**53), with_(step=-1), with_(step=True), with_(step=1.0),
        with_(features=[1e39, 0, 0]), with_(features=[10**400, 0, 0]), with_(features=[True, 0, 0]),
        with_(features=[[1, 2, 3]] * 3), with_(features=[1, 2, 3, 4]), with_(features=[]),
        with_(reset=1), with_(end=0), with_(reset=None, end=True), with_(stream_id="é" * 256),
        with_(stream_id="é" * 257), with_(stream_id=""), b'{"stream_id": "a", "features": [1, 2, 3], "ts": NaN}',
        b'{"stream_id": "a", "features": [1, 2, NaN]}', b'{"stream_id": "a", "stream_id": 5, "features": [1,2,3]}',
        b'\t{"stream_id": "a", "features": [1, 2, 3]}\r\n', b'{"stream_id": "a", "features": [1, 2, 3]}{}',
    ]
    for message in cases:  # alone, repeated, and among good ones (polls of 12+ take the bulk path)
        for poll in ([message], [message] * 13, [GOOD_BYTES] * 6 + [message] + [GOOD_BYTES] * 6):
            _same_decode(decode(poll, F, LIMIT), decode([bytearray(m) for m in poll], F, LIMIT))
    _same_decode(decode(cases, F, LIMIT), decode([bytearray(m) for m in cases], F, LIMIT))


GOOD_BYTES = enc(GOOD)


def test_stream_ids_must_be_encodable_as_utf8_keys_on_both_paths():
    """A lone surrogate is valid JSON (\\ud800) but no UTF-8 text: it would crash the output key. The id is
    refused (the bulk path for polls of 12+ too); a surrogate *pair* is a real character and is fine, and
    lone surrogates elsewhere (unknown fields) do not matter."""
    lone = b'{"stream_id": "s\\ud800x", "step": 0, "features": [1, 2, 3]}'
    pair = b'{"stream_id": "s\\ud83d\\ude00", "step": 0, "features": [1, 2, 3]}'
    elsewhere = b'{"stream_id": "b", "note": "\\udc00", "step": 0, "features": [1, 2, 3]}'
    for poll in ([lone, pair, elsewhere], [GOOD_BYTES] * 6 + [lone, pair, elsewhere] + [GOOD_BYTES] * 6):
        events, rejected = decode(poll, F, LIMIT)
        assert [r.code for r in rejected] == [schema.INVALID_STREAM_ID]
        assert "lone surrogate" in rejected[0].detail
        assert "s\U0001F600" in events.stream_ids and "b" in events.stream_ids
        for sid in events.stream_ids:
            sid.encode("utf-8")


def test_details_never_fail_on_odd_values():
    deep = b'{"stream_id": ' + b"[" * 900 + b"]" * 900 + b', "features": [1, 2, 3]}'
    huge = enc({"stream_id": "x" * 10_000_000, "features": [1, 2, 3]})
    _, rejected = decode([deep, huge], F, max_message_bytes=10**8)
    assert [r.code for r in rejected] == [schema.INVALID_STREAM_ID] * 2
    assert all(len(r.detail) < 300 for r in rejected)


def test_dead_letter_keep_cuts_the_payload_and_records_its_size():
    dl = dead_letter("invalid_json", "bad", {"index": 0}, b"abcdef", keep=2)
    assert dl["payload"] == "ab" and dl["payload_truncated"] is True and dl["payload_bytes"] == 6
    assert dead_letter("invalid_json", "bad", {"index": 0}, b"abcdef", keep=6) == dead_letter(
        "invalid_json", "bad", {"index": 0}, b"abcdef")


# --------------------------------------------------------------------------- token models (an Embedding first)

V = 50  # vocabulary size
TOKEN_GOOD = {"stream_id": "t", "step": 0, "features": 17}


def tok(**changes) -> bytes:
    obj = dict(TOKEN_GOOD)
    for k, v in changes.items():
        if v is ...:
            obj.pop(k, None)
        else:
            obj[k] = v
    return enc(obj)


TOKEN_BAD = [
    (tok(features=...), schema.MISSING_FEATURES),
    (tok(features=None), schema.MISSING_FEATURES),
    (tok(features=17.0), schema.INVALID_FEATURES),  # JSON integers only, like `step`
    (tok(features=True), schema.INVALID_FEATURES),
    (tok(features=-1), schema.INVALID_FEATURES),
    (tok(features=V), schema.INVALID_FEATURES),  # out of vocabulary
    (tok(features=2**64), schema.INVALID_FEATURES),
    (tok(features="17"), schema.INVALID_FEATURES),
    (tok(features=[]), schema.INVALID_FEATURES),
    (tok(features=[1, 2.5]), schema.INVALID_FEATURES),
    (tok(features=[1, V]), schema.INVALID_FEATURES),
    (tok(features=[[1], [2]]), schema.INVALID_FEATURES),
    (tok(features={"id": 1}), schema.INVALID_FEATURES),
    (tok(step=-1), schema.INVALID_STEP),
    (b'{"stream_id": "t", "features": NaN}', schema.INVALID_FEATURES),
]


@pytest.mark.parametrize("raw,code", TOKEN_BAD, ids=[f"{c}:{r[:50]!r}" for r, c in TOKEN_BAD])
def test_token_events_are_refused_with_their_code(raw, code):
    for poll in ([raw], [tok()] * 6 + [raw] + [tok()] * 6):  # the careful path alone, and among a bulk poll
        events, rejected = decode(poll, 1, LIMIT, vocab_size=V)
        assert [(r.index, r.code) for r in rejected] == [(poll.index(raw), code)]
        assert len(events) == len(poll) - 1


def test_token_events_single_ids_and_chunks():
    messages = [tok(features=0), tok(features=V - 1, step=3), tok(features=[5, 0, 49], step=None),
                tok(features=[7]), b'{"stream_id": "u", "features": 12, "end": true}']
    for poll in (messages, messages * 3):  # per message, and the bulk path (12+ messages)
        events, rejected = decode(poll, 1, LIMIT, vocab_size=V)
        assert rejected == []
        assert events.features.shape == (7 * len(poll) // 5, 1) and events.features.dtype == np.float32
        assert events.features[:7, 0].tolist() == [0, 49, 5, 0, 49, 7, 12]
        assert events.counts[:5].tolist() == [1, 1, 3, 1, 1]
        assert events.chunk[:5].tolist() == [False, False, True, True, False]  # a list is a chunk, even of one id
        assert events.steps[:5].tolist() == [0, 3, -1, 0, -1]


def test_a_float_model_refuses_token_events_and_a_token_model_float_events():
    _, rejected = decode([tok()], F, LIMIT)
    assert [r.code for r in rejected] == [schema.INVALID_FEATURES]
    _, rejected = decode([GOOD_BYTES], 1, LIMIT, vocab_size=V)
    assert [r.code for r in rejected] == [schema.INVALID_FEATURES]
    with pytest.raises(ValueError, match="feature size 1"):
        decode([tok()], 3, LIMIT, vocab_size=V)


_ODD_TOKENS = [None, True, False, 0, -1, 1, V - 1, V, 17.0, 2**53, 10**400, "3", [], [1], [1, 2, 3], [1, -1],
               [[1]], [1, V], [0.5], {}]


def _fuzz_token_message(rng) -> bytes:
    obj: dict = {"stream_id": rng.choice(["s-1", "s-2", "é"]), "features": int(rng.integers(0, V))}
    if rng.random() < 0.5:
        obj["step"] = int(rng.integers(0, 50))
    if rng.random() < 0.2:
        obj["ts"] = int(rng.integers(0, 2**41))
    if rng.random() < 0.1:
        obj["reset" if rng.random() < 0.5 else "end"] = bool(rng.random() < 0.5)
    roll = rng.random()
    if roll < 0.1:
        obj["features"] = [int(v) for v in rng.integers(0, V, int(rng.integers(1, 4)))]
    elif roll < 0.3:
        obj["features"] = _ODD_TOKENS[int(rng.integers(len(_ODD_TOKENS)))]
    elif roll < 0.35:
        obj.pop("features")
    elif roll < 0.4:
        obj["step"] = _ODD_VALUES[int(rng.integers(len(_ODD_VALUES)))]
    raw = json.dumps(obj).encode()
    return raw[: int(rng.integers(len(raw)))] if rng.random() < 0.03 else raw


@pytest.mark.parametrize("seed", range(4))
def test_token_bulk_decode_equals_careful_decode_on_a_fuzzed_corpus(seed):
    rng = np.random.default_rng(100 + seed)
    for size in (1, 12, 13, 60, 400):
        messages = [_fuzz_token_message(rng) for _ in range(size)]
        got = decode(messages, 1, LIMIT, vocab_size=V)
        want = decode([bytearray(m) for m in messages], 1, LIMIT, vocab_size=V)
        _same_decode(got, want)
        assert len(got[0]) + len(got[1]) == size
