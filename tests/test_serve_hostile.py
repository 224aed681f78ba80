"""Hostile input through the real broker, with `streamer serve` as a separate process: raw bytes produced
straight to the input topic by kafka-python and by kcat (random bytes, random and deeply nested JSON, lone
surrogates in every string field, huge numbers, strings just under and over each limit, a 100k-step chunk,
NUL bytes, tombstones, missing and wrong keys). Afterwards serve is still the same process, every good
stream's predictions are complete and equal the offline run, every bad message is exactly one dead letter
that fits its topic, and the committed offsets reach the input's end; at-least-once and exactly-once.

Also: serve killed (-9) right after each bad message is read gets past it when restarted; an injected
fault in the model costs one internal_error dead letter."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter

import numpy as np
import pytest

from streamer import limits, schema
from streamer.kafka import topics as topic_admin
from streamer.kafka.topics import Topics
from tests import hostile_support as hs
from tests.kafka_support import unique_name
from tests.serve_support import (Deployment, Serve, assert_parity, committed_offsets, count_steps,
                                 end_offsets, event_messages, make_sequences, offline, predictions_by_key,
                                 read_topic)
from tests.serve_support import saved_step_model

pytestmark = pytest.mark.kafka

F = hs.F


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    return saved_step_model(tmp_path_factory, "hostile-model", F, 8, seed=21)


def _deployment(admin, prefix: str, partitions: int = 3) -> Deployment:
    """Topics with small limits on the output (300 KB) and dead-letter (100 KB) topics, and an input topic
    that takes messages beyond serve's --max-message-bytes."""
    d = Deployment(prefix, partitions)
    sizes = {d.input: hs.INPUT_TOPIC_BYTES, d.output: hs.OUTPUT_TOPIC_BYTES, d.dlq: hs.DLQ_TOPIC_BYTES}
    admin.create_topics({t: {"num_partitions": partitions, "replication_factor": 1,
                             "configs": {"max.message.bytes": str(n)}} for t, n in sizes.items()},
                        timeout_ms=30000, wait_for_metadata=True)
    topic_admin.ensure(admin, Topics(d.input, d.output, d.dlq, d.changelog), create=True)
    return d


def _produce(bootstrap: str, topic: str, messages) -> list[tuple[int, int]]:
    """Send (key, value) messages with kafka-python (murmur2); returns their (partition, offset)."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=4_000_000)
    futures = [producer.send(topic, key=key, value=value) for key, value in messages]
    producer.flush()
    producer.close()
    return [(m.partition, m.offset) for m in (f.get(timeout=30) for f in futures)]


def _sources(records) -> list[tuple[int, int]]:
    """The (partition, offset) each dead letter is about."""
    return [(dl["source"]["partition"], dl["source"]["offset"]) for dl in (json.loads(r.value) for r in records)]


def _wait_committed(bootstrap: str, d: Deployment, serve: Serve, timeout_s: float = 150.0) -> None:
    end = end_offsets(bootstrap, d.input)
    deadline = time.monotonic() + timeout_s
    while committed_offsets(bootstrap, d.group, d.input) != end:
        assert serve.proc.poll() is None, f"serve exited ({serve.proc.returncode}):\n{serve.log()[-3000:]}"
        assert time.monotonic() < deadline, (f"committed {committed_offsets(bootstrap, d.group, d.input)}, end {end}"
                                             f"\n{serve.log()[-3000:]}")
        time.sleep(0.5)


def _good_streams(rng) -> tuple[dict[str, np.ndarray], list, list]:
    """Good streams: (sequences, their kafka-python messages, their kcat messages)."""
    regular = make_sequences(10, 20, F, seed=int(rng.integers(1 << 30)), prefix="g")
    weird = {sid: rng.normal(0, 1, (5, F)).astype(np.float32) for sid in hs.weird_stream_ids()}
    by_kcat = make_sequences(2, 20, F, seed=int(rng.integers(1 << 30)), prefix="kc")
    chunky = {"huge-chunk": rng.integers(0, 3, (100_000, F)).astype(np.float32),  # split into several records
              "mid-chunk": rng.normal(0, 1, (12_000, F)).astype(np.float32)}
    kafka_python = event_messages(regular) + event_messages(weird, ts=False)
    first = next(iter(weird))  # an odd but valid event: a lone surrogate in an unknown field and in a key
    odd = {"stream_id": first, "step": 5, "features": [0.5, 0.5, 0.5], "note": "\udc00", "\ud800": 1}
    weird[first] = np.vstack([weird[first], np.full((1, F), 0.5, np.float32)])
    kafka_python.append((first.encode(), json.dumps(odd).encode()))
    kafka_python += [(b"huge-chunk", hs.compact_chunk("huge-chunk", chunky["huge-chunk"])),
                     (b"mid-chunk", json.dumps({"stream_id": "mid-chunk", "step": 0,
                                                "features": chunky["mid-chunk"].tolist()}).encode())]
    return {**regular, **weird, **by_kcat, **chunky}, kafka_python, event_messages(by_kcat)


@pytest.mark.slow
@pytest.mark.parametrize("exactly_once", [False, True], ids=["at-least-once", "exactly-once"])
def test_hostile_input_costs_one_dead_letter_each_and_nothing_else(kafka_client, kafka_bootstrap, kafka_admin,
                                                                   small_model, tmp_path, exactly_once):
    model, model_dir = small_model
    hs.need_kcat()
    d = _deployment(kafka_admin, "hostile")
    rng = np.random.default_rng(5)
    seqs, good_kp, good_kcat = _good_streams(rng)
    bad = hs.bad_corpus(seed=6)
    extra = ["--on-key-mismatch", "reject", "--max-message-bytes", str(hs.MAX_MESSAGE_BYTES)]
    if exactly_once:  # (the 100k-step chunk takes seconds to apply: serve commits the open transaction first)
        extra += ["--exactly-once", "--transactional-id", unique_name("txid")]
    isolation = "read_committed" if exactly_once else "read_uncommitted"
    serve = Serve(model_dir, d, kafka_bootstrap, tmp_path, *extra, client=kafka_client, name="hostile")
    try:
        serve.wait_ready()
        pid = serve.proc.pid
        half = len(good_kp) // 2
        _produce(kafka_bootstrap, d.input, good_kp[:half])
        # half through kcat, half through kafka-python (kcat cannot send an empty value; tombstones use kcat -Z)
        by_kcat = [v is None or (i % 2 == 1 and v != b"") for i, (_, v, _) in enumerate(bad)]
        _produce(kafka_bootstrap, d.input, [(k, v) for (k, v, _), kc in zip(bad, by_kcat) if not kc])
        hs.kcat_produce(kafka_bootstrap, d.input, [(k, v) for (k, v, _), kc in zip(bad, by_kcat) if kc],
                        tmp_path / "kcat")
        _produce(kafka_bootstrap, d.input, good_kp[half:])
        hs.kcat_lines(kafka_bootstrap, d.input, good_kcat, partitioner="murmur2_random")
        _wait_committed(kafka_bootstrap, d, serve)

        # every good stream complete, equal to the offline run (once each under exactly-once)
        total = sum(len(x) for x in seqs.values())
        records = read_topic(kafka_bootstrap, d.output, isolation=isolation, until=lambda rs: count_steps(rs) >= total,
                             timeout_s=60)
        assert_parity(predictions_by_key(records), offline(model, seqs), exactly_once=exactly_once)
        huge = [r for r in records if r.key == b"huge-chunk"]
        assert len(huge) >= 10  # 100k steps do not fit one 300 KB record: split, each with its step
        assert all(len(r.value) + len(r.key) + limits.RECORD_OVERHEAD <= hs.OUTPUT_TOPIC_BYTES for r in records)

        # every bad message exactly one dead letter, about that message, fitting the 100 KB topic
        dead = read_topic(kafka_bootstrap, d.dlq, isolation=isolation, until=lambda rs: len(rs) >= len(bad),
                          timeout_s=30, settle_s=1.0)
        inputs = {(r.partition, r.offset): r for r in read_topic(kafka_bootstrap, d.input)}
        sources = _sources(dead)
        for r, source in zip(dead, sources):
            dl = json.loads(r.value)
            original = inputs[source]
            raw = original.value or b""
            kept = schema.payload_bytes(dl)
            assert raw == kept or (dl.get("payload_truncated") and raw.startswith(kept)
                                   and dl["payload_bytes"] == len(raw))
            assert r.key == limits.dead_letter_key(original.key)
            assert len(r.value) + len(r.key or b"") + limits.RECORD_OVERHEAD <= hs.DLQ_TOPIC_BYTES
        assert len(sources) == len(set(sources)) == len(bad)
        codes = Counter(json.loads(r.value)["error"] for r in dead)
        assert not Counter(code for _, _, code in bad if code is not None) - codes
        assert sum(json.loads(r.value).get("payload_truncated", False) for r in dead) >= 6

        # still the same process; the counters tell the story; nothing was retried
        assert serve.proc.poll() is None and serve.proc.pid == pid
        assert serve.metric("streamer_kafka_recoveries_total") == 0, serve.log()[-5000:]
        assert serve.metric("streamer_dead_letters_total") == len(bad)
        assert serve.metric("streamer_key_mismatch_total") == 2
        assert serve.metric("streamer_kafka_partitioner_mismatch_total") == 0  # kcat ran with murmur2_random
        assert serve.metric("streamer_kafka_errors_total", kind="internal") == 0
        assert serve.metric("streamer_kafka_checkpoints_total", outcome="failed") == 0
        assert "Traceback" not in serve.log()
        assert serve.terminate() == 0, serve.log()[-3000:]
    finally:
        serve.kill()
        d.delete(kafka_admin)


@pytest.mark.slow
@pytest.mark.parametrize("exactly_once", [False, True], ids=["at-least-once", "exactly-once"])
def test_killed_right_after_each_bad_message_the_restarted_serve_gets_past_it(kafka_client, kafka_bootstrap,
                                                                              kafka_admin, small_model, tmp_path,
                                                                              exactly_once):
    """No crash loop: each bad message is read, dead-lettered, and serve is killed before it can checkpoint;
    the restarted instance (same --instance-id: it gets its partitions back at once) reads it again and
    goes on. The messages are the ones that used to crash serve or stall its checkpoints."""
    model, model_dir = small_model
    d = _deployment(kafka_admin, "crashloop", partitions=2)
    instance = unique_name("instance")
    extra = ["--on-key-mismatch", "reject", "--checkpoint-interval", "30", "--max-message-bytes",
             str(hs.MAX_MESSAGE_BYTES)]
    if exactly_once:
        extra += ["--exactly-once", "--transactional-id", unique_name("txid")]
    isolation = "read_committed" if exactly_once else "read_uncommitted"
    poison = [json.dumps({"stream_id": "\ud800", "step": 0, "features": [1, 2, 3]}).encode(),
              b'"' * 60_000,  # a dead letter twice the dead-letter topic's limit
              b"\xff" * 90_000]  # base64 makes it bigger still
    seqs = make_sequences(4, 6, F, seed=7, prefix="cl")
    serve = None
    try:
        for i, value in enumerate(poison):
            where = _produce(kafka_bootstrap, d.input, event_messages(seqs, i, i + 1) + [(b"poison", value)])[-1]
            serve = Serve(model_dir, d, kafka_bootstrap, tmp_path, *extra, client=kafka_client, name=f"cl{i}",
                          instance_id=instance)
            read_topic(kafka_bootstrap, d.dlq, until=lambda rs: where in _sources(rs), timeout_s=60)  # uncommitted
            assert serve.proc.poll() is None, serve.log()[-3000:]
            serve.kill(dump=False)  # before any checkpoint: the bad message will be read again
        _produce(kafka_bootstrap, d.input, event_messages(seqs, len(poison)))
        serve = Serve(model_dir, d, kafka_bootstrap, tmp_path, *extra, "--checkpoint-interval", "0.3",  # the last
                      client=kafka_client, name="cl-last", instance_id=instance)  # --checkpoint-interval given wins
        _wait_committed(kafka_bootstrap, d, serve, timeout_s=90)
        total = sum(len(x) for x in seqs.values())
        records = read_topic(kafka_bootstrap, d.output, isolation=isolation, until=lambda rs: count_steps(rs) >= total)
        assert_parity(predictions_by_key(records), offline(model, seqs), exactly_once=exactly_once)
        dead = read_topic(kafka_bootstrap, d.dlq, isolation=isolation, settle_s=1.0,
                          until=lambda rs: len(set(_sources(rs))) >= len(poison))
        by_source = Counter(_sources(dead))
        assert len(by_source) == len(poison)
        if exactly_once:  # the killed instances' transactions were aborted: one dead letter each
            assert set(by_source.values()) == {1}
        assert serve.proc.poll() is None
        assert serve.terminate() == 0, serve.log()[-3000:]
    finally:
        if serve is not None:
            serve.kill()
        d.delete(kafka_admin)


FAULTY_SERVE = """
import sys
import numpy as np
import models.serving
from streamer import cli

real = models.serving.load_step_model

class Faulty:
    def __init__(self, model):
        self.model = model
        for name in ("feature_size", "output_size", "state_size", "version"):
            setattr(self, name, getattr(model, name))
    def initial_state(self, n):
        return self.model.initial_state(n)
    def step(self, x, state):
        if (x == 666.0).any():
            raise FloatingPointError("injected fault: the model cannot take 666")
        return self.model.step(x, state)

models.serving.load_step_model = lambda path: Faulty(real(path))
sys.exit(cli.main(sys.argv[1:]))
"""


def test_an_exception_in_the_model_costs_one_internal_error_dead_letter(kafka_client, kafka_bootstrap, kafka_admin,
                                                                        small_model, tmp_path):
    """The real serve command with a model whose step raises on one value (an injected fault): the event
    becomes one internal_error dead letter, the other events of its poll are applied exactly once."""
    model, model_dir = small_model
    d = _deployment(kafka_admin, "fault", partitions=2)
    script = tmp_path / "faulty_serve.py"
    script.write_text(FAULTY_SERVE)
    seqs = make_sequences(6, 10, F, seed=8, prefix="f")
    messages = event_messages(seqs)
    messages.insert(25, (b"f0002", json.dumps({"stream_id": "f0002", "step": 10, "features": [1, 666, 2]}).encode()))
    _produce(kafka_bootstrap, d.input, messages)
    serve = Serve(model_dir, d, kafka_bootstrap, tmp_path, client=kafka_client, name="faulty",
                  launcher=[sys.executable, str(script)])
    try:
        _wait_committed(kafka_bootstrap, d, serve, timeout_s=90)
        total = sum(len(x) for x in seqs.values())
        records = read_topic(kafka_bootstrap, d.output, until=lambda rs: count_steps(rs) >= total)
        assert_parity(predictions_by_key(records), offline(model, seqs))
        dead = [json.loads(r.value) for r in read_topic(kafka_bootstrap, d.dlq, until=lambda rs: len(rs) >= 1,
                                                        settle_s=1.0)]
        assert [dl["error"] for dl in dead] == ["internal_error"]
        assert "FloatingPointError" in dead[0]["detail"] and "666" in dead[0]["detail"]
        assert serve.metric("streamer_events_total", outcome="failed") == 1
        assert serve.log().count("becomes an internal_error dead letter") == 1
        assert serve.terminate() == 0, serve.log()[-3000:]
    finally:
        serve.kill()
        d.delete(kafka_admin)
