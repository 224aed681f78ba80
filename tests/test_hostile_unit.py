"""Broker-free checks of the Kafka transport's hostile-input pieces: restoring a split stream (counted once,
newest record kept), the partitioner check, the topology watch's refusal, the start-up limit checks, and
the new serve flags. The real-broker behaviour is in test_serve_hostile/routing/topology/membership.py."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from streamer.errors import UserError
from streamer.kafka import limits as topic_limits
from streamer.kafka.metrics import KafkaMetrics
from streamer.kafka.restore import Restorer
from streamer.kafka.routing import PartitionerCheck, murmur2_many, murmur2_partition
from streamer.kafka.topics import Topics
from streamer.kafka.topology import TopologyWatch
from streamer.state import StateStore, StreamRecord
from tests.streamer_helpers import lstm_step_model



def _record(sid: str, last_step: int, last_seen: float, partition: int) -> bytes:
    return StreamRecord(sid, np.full(4, last_step, np.float32), last_step, last_seen, "v1", partition).to_bytes()


def test_a_stream_with_state_in_two_changelog_partitions_is_restored_once_from_its_newest_record(caplog):
    store = StateStore(4, model_version="v1")
    tables = {0: {b"a": _record("a", 3, 100.0, 0), b"b": _record("b", 9, 300.0, 0)},
              1: {b"b": _record("b", 5, 200.0, 1), b"c": _record("c", 1, 50.0, 1)}}
    with caplog.at_level("ERROR"):
        stats = Restorer(None, "cl").load(store, tables)
    assert stats.streams == 3 and stats.records == 4  # the "restored 30 streams" for 20
    assert store.export("b").last_step == 9 and store.export("b").partition == 0
    assert "have state in two partitions" in caplog.text and "'b' in 0 and 1" in caplog.text


def test_the_partitioner_check_counts_messages_off_their_murmur2_partition():
    metrics = KafkaMetrics(CollectorRegistry())
    check = PartitionerCheck(metrics.partitioner_mismatches)
    keys = [f"s{i}".encode() for i in range(40)]
    right = [murmur2_partition(k, 4) for k in keys]
    assert check.check(right, keys, 4) == 0
    wrong = [(p + 1) % 4 for p in right] + [0, 1, 2, 3]
    assert check.check(wrong, keys + [None] * 4, 4) == 40
    assert metrics.partitioner_mismatches._value.get() == 40
    # the topic grew to 6: messages produced before (murmur2 mod 4) still count as right
    assert check.check(right, keys, 6) == 0
    assert check.check(wrong, keys, None) == 0  # the partition count is not known yet: nothing to say


# Utils.murmur2 test vectors of the Java client (clients/src/test/.../UtilsTest.java), as signed 32-bit ints
JAVA_MURMUR2 = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536,
                b"a-little-bit-longer-string": -1486304829, b"abc": 479470107,
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971}


def test_partitions_are_the_java_clients_murmur2_partitions():
    for key, java in JAVA_MURMUR2.items():
        for n in (1, 3, 6, 100):
            assert murmur2_partition(key, n) == (java & 0x7FFFFFFF) % n  # Utils.toPositive(murmur2) % n


def test_murmur2_of_many_keys_at_once_is_the_java_clients_and_kafka_pythons():
    from kafka.partitioner.default import murmur2

    rng = np.random.default_rng(7)
    keys = [bytes(rng.integers(0, 256, int(n)).astype(np.uint8)) for n in rng.integers(0, 70, 2000)]
    keys += list(JAVA_MURMUR2) + [b"", "s-\u00e9\u4e2d".encode()] + [f"s{i:05d}".encode() for i in range(300)]
    assert murmur2_many(keys) == [murmur2(k) for k in keys]
    assert murmur2_many(list(JAVA_MURMUR2)) == [java & 0xFFFFFFFF for java in JAVA_MURMUR2.values()]
    assert murmur2_many([]) == []


def test_an_input_topic_that_outgrows_its_changelog_stops_serve_without_create_topics():
    metrics = KafkaMetrics(CollectorRegistry())
    watch = TopologyWatch(Topics("in", "out", "dlq", "cl"), clients=None, metrics=metrics, changelog_partitions=2,
                          output_partitions=2, create_topics=False)
    watch.observe(2)
    watch.observe(2)
    with pytest.raises(UserError, match=r"now has 3 partitions, but changelog cl has only 2.*--partitions 3"):
        watch.observe(3)
    assert metrics.input_partitions._value.get() == 3
    assert watch.output_partition(1) == 1 and watch.output_partition(2) is None


def test_topics_too_small_for_what_serve_writes_are_refused_at_start_up():
    model = lstm_step_model(3, (400,), 2)  # 800 state floats: a ~4.5 KB changelog record
    topics = Topics("in", "out", "dlq", "cl")
    topic_limits.check(topic_limits.TopicLimits(output=1 << 20, dlq=1 << 20, changelog=1 << 20), topics, model)
    with pytest.raises(UserError, match="changelog topic cl accepts records of at most 4000 bytes"):
        topic_limits.check(topic_limits.TopicLimits(1 << 20, 1 << 20, 4000), topics, model)
    with pytest.raises(UserError, match="dead-letter topic dlq"):
        topic_limits.check(topic_limits.TopicLimits(1 << 20, 500, 1 << 20), topics, model)
    with pytest.raises(UserError, match="output topic out"):
        topic_limits.check(topic_limits.TopicLimits(200, 1 << 20, 1 << 20), topics, model)
    found = topic_limits.TopicLimits(output=300_000, dlq=100_000, changelog=1 << 20)
    assert topic_limits.batch_bytes(found, 256 * 1024) == 100_000 - 128


def test_membership_and_routing_flags(monkeypatch):
    from streamer.cli import build_parser

    base = ["serve", "--model", "m", "--bootstrap-servers", "h:1"]
    args = build_parser().parse_args(base)
    assert args.instance_id is None and not args.dynamic_membership and not args.stay_in_group
    assert args.on_key_mismatch == "accept" and args.metadata_max_age_ms == 5000
    monkeypatch.setenv("STREAMER_ON_KEY_MISMATCH", "reject")
    monkeypatch.setenv("STREAMER_INSTANCE_ID", "pod-3")
    args = build_parser().parse_args(base)
    assert args.on_key_mismatch == "reject" and args.instance_id == "pod-3"


def test_group_health_counts_outages_replaces_stuck_members_and_forgives_one_fence_after_an_outage(caplog):
    from streamer.kafka.health import OUTAGE_MARGIN_S, GroupHealth

    metrics = KafkaMetrics(CollectorRegistry())
    health = GroupHealth(metrics, session_timeout_s=6.0, stuck_after_s=20.0)
    assert not health.fence_after_outage(0.0)  # no outage seen: a fence is another process
    with caplog.at_level("INFO", logger="streamer.serve"):
        for t, count in enumerate([2, 0, 0, 0, 1]):
            health.connections(count, float(t))
    assert metrics.errors.labels("connect")._value.get() == 1  # one outage, counted once
    assert metrics.connections._value.get() == 1
    assert "no connection to any broker" in caplog.text and "brokers reachable again" in caplog.text
    assert health.fence_after_outage(3.0 + 6.0 + OUTAGE_MARGIN_S - 1)  # librdkafka's own stale membership
    assert not health.fence_after_outage(3.0 + 6.0 + OUTAGE_MARGIN_S - 1)  # once per outage
    health.connections(0, 100.0)
    assert not health.fence_after_outage(100.0 + 6.0 + OUTAGE_MARGIN_S + 1)  # too long after it
    assert not health.stuck(None, 0.0) and not health.stuck(False, 1.0) and not health.stuck(False, 20.0)
    assert health.stuck(False, 21.5) and not health.stuck(False, 22.0)  # replaced: the clock starts again
    assert not health.stuck(True, 50.0)
