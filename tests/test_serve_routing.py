"""Routing mistakes through the real broker are visible: kcat's default partitioner (CRC32) puts most keys
in other partitions than murmur2, so mixing it with kafka-python splits streams: serve counts the messages
off their murmur2 partition and the split streams, and logs both partitions; kcat with
-X partitioner=murmur2_random agrees with kafka-python. `streamer produce` keys by stream_id with murmur2."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from streamer.kafka import topics as topic_admin
from streamer.kafka.routing import murmur2_partition
from streamer.kafka.topics import Topics
from tests import hostile_support as hs
from tests.serve_support import (REPO, Deployment, Serve, assert_parity, committed_offsets, count_steps,
                                 end_offsets, event_messages, make_sequences, offline, predictions_by_key, produce,
                                 read_topic)
from tests.serve_support import saved_step_model

pytestmark = pytest.mark.kafka

F = 3
N = 3  # partitions


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    return saved_step_model(tmp_path_factory, "routing-model", F, 6, seed=31)


def _wait_committed(bootstrap, d, serve, timeout_s=60.0):
    end = end_offsets(bootstrap, d.input)
    deadline = time.monotonic() + timeout_s
    while committed_offsets(bootstrap, d.group, d.input) != end:
        assert serve.proc.poll() is None and time.monotonic() < deadline, serve.log()[-3000:]
        time.sleep(0.3)


def test_kcat_default_partitioner_splits_streams_and_serve_says_so(kafka_client, kafka_bootstrap, kafka_admin,
                                                                   small_model, tmp_path):
    model, model_dir = small_model
    hs.need_kcat()
    d = Deployment("route", N)
    topic_admin.ensure(kafka_admin, Topics(d.input, d.output, d.dlq, d.changelog), create=True, partitions=N)
    serve = Serve(model_dir, d, kafka_bootstrap, tmp_path, client=kafka_client, name="route")
    try:
        serve.wait_ready()
        # 50 streams: step 0 by kcat with its default partitioner, step 1 by kafka-python (murmur2)
        mixed = make_sequences(50, 2, F, seed=3, prefix="mix")
        hs.kcat_lines(kafka_bootstrap, d.input, event_messages(mixed, 0, 1), partitioner=None)
        produce(kafka_bootstrap, d.input, event_messages(mixed, 1, 2))
        _wait_committed(kafka_bootstrap, d, serve)
        first = [r for r in read_topic(kafka_bootstrap, d.input) if b'"step": 0' in r.value]
        off = {r.key for r in first if r.partition != murmur2_partition(r.key, N)}
        assert len(off) > 20  # kcat's CRC32 disagrees with murmur2 for most keys
        assert serve.metric("streamer_kafka_partitioner_mismatch_total") == len(off)
        assert serve.metric("streamer_split_streams_total") == len(off)  # each such stream, once
        log = serve.log()
        assert "is split across partitions" in log and "murmur2" in log and "partitioner=murmur2_random" in log

        # the same with -X partitioner=murmur2_random: kcat and kafka-python agree, nothing to report
        agreed = make_sequences(50, 6, F, seed=4, prefix="ok")
        hs.kcat_lines(kafka_bootstrap, d.input, event_messages(agreed, 0, 3), partitioner="murmur2_random")
        produce(kafka_bootstrap, d.input, event_messages(agreed, 3, 6))
        _wait_committed(kafka_bootstrap, d, serve)
        assert serve.metric("streamer_kafka_partitioner_mismatch_total") == len(off)
        assert serve.metric("streamer_split_streams_total") == len(off)
        total = sum(len(x) for x in agreed.values())
        records = read_topic(kafka_bootstrap, d.output,
                             until=lambda rs: count_steps([r for r in rs if r.key.startswith(b"ok")]) >= total)
        got = {k: v for k, v in predictions_by_key(records).items() if k[0].startswith("ok")}
        assert_parity(got, offline(model, agreed))
        assert serve.terminate() == 0, serve.log()[-3000:]
    finally:
        serve.kill()
        d.delete(kafka_admin)


def test_streamer_produce_keys_by_stream_id_with_murmur2(kafka_bootstrap, kafka_admin):
    d = Deployment("produce", N)
    topic_admin.ensure(kafka_admin, Topics(d.input, d.output, d.dlq, d.changelog), create=True, partitions=N)
    try:
        out = subprocess.run([sys.executable, "-m", "streamer", "produce", "--bootstrap-servers", kafka_bootstrap,
                              "--topic", d.input, "--streams", "40", "--max-len", "12", "--seed", "1", "--quiet"],
                             cwd=REPO, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        records = read_topic(kafka_bootstrap, d.input)
        assert len({r.key for r in records}) == 40
        for r in records:
            assert r.key == json.loads(r.value)["stream_id"].encode()
            assert r.partition == murmur2_partition(r.key, N)
    finally:
        d.delete(kafka_admin)
