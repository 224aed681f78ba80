"""The real broker does what the streaming server relies on: admin-created topics, keyed
produce, consumer groups with manual commits, exactly-once transactions (offsets committed
inside the transaction, aborted data invisible to read_committed) and compacted topics.
Also checks the kafka.sh lifecycle (up/status/down) on its own ports."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.structs import OffsetAndMetadata, TopicPartition

from tests.kafka_support import poll_records, read_to_end, unique_name

pytestmark = pytest.mark.kafka

KAFKA_SH = Path(__file__).resolve().parents[1] / "deploy" / "kafka-local" / "kafka.sh"


def _consumer(bootstrap, **kw):
    kw.setdefault("auto_offset_reset", "earliest")
    kw.setdefault("enable_auto_commit", False)
    return KafkaConsumer(bootstrap_servers=bootstrap, consumer_timeout_ms=30000, **kw)


def _assigned(consumer, topic, partitions):
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    return tps


def test_keyed_messages_in_a_consumer_group_with_manual_commits(kafka_bootstrap, unique_topic):
    topic = unique_topic("keyed", partitions=3)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    sent = [(f"stream-{i % 5}".encode(), f"{i}".encode()) for i in range(40)]
    for key, value in sent:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()

    group = unique_name("grp")
    consumer = _consumer(kafka_bootstrap, group_id=group)
    consumer.subscribe([topic])
    records = poll_records(consumer, len(sent))
    assert len(records) == len(sent)

    # One key always lands on one partition, and per key the order is the send order.
    partitions_by_key = defaultdict(set)
    values_by_key = defaultdict(list)
    for r in records:
        partitions_by_key[r.key].add(r.partition)
        values_by_key[r.key].append(r.value)
    assert all(len(p) == 1 for p in partitions_by_key.values())
    for key, values in values_by_key.items():
        assert values == [v for k, v in sent if k == key]

    # Manual commit: the committed offsets are exactly the end of each partition.
    consumer.commit()
    tps = [TopicPartition(topic, p) for p in range(3)]
    end = consumer.end_offsets(tps)
    assert {tp: consumer.committed(tp) or 0 for tp in tps} == end
    consumer.close()

    # A new member of the same group resumes after the commit: nothing is redelivered.
    again = _consumer(kafka_bootstrap, group_id=group)
    again.subscribe([topic])
    redelivered = poll_records(again, 1, timeout_s=1)
    deadline = time.monotonic() + 30
    while not again.assignment():  # wait for the rebalance to hand it the partitions
        assert time.monotonic() < deadline, "the second consumer never got an assignment"
        redelivered += poll_records(again, 1, timeout_s=0.5)
    assert {tp: again.position(tp) for tp in tps} == end
    assert redelivered + poll_records(again, 1, timeout_s=1) == []
    again.close()


def test_transactions_commit_offsets_and_hide_aborted_data(kafka_bootstrap, unique_topic):
    src = unique_topic("tx-in")
    dst = unique_topic("tx-out")
    plain = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for i in range(5):
        plain.send(src, key=b"k", value=f"in-{i}".encode())
    plain.flush()
    plain.close()

    group = unique_name("tx-grp")
    consumer = _consumer(kafka_bootstrap, group_id=group, isolation_level="read_committed")
    consumer.subscribe([src])
    inputs = poll_records(consumer, 5)
    assert [r.value for r in inputs] == [f"in-{i}".encode() for i in range(5)]

    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap,
                             transactional_id=unique_name("txid"))
    producer.init_transactions()

    # consume -> transform -> produce, with the input offsets committed in the transaction.
    producer.begin_transaction()
    for r in inputs:
        producer.send(dst, key=r.key, value=r.value.replace(b"in", b"out"))
    tp = TopicPartition(src, 0)
    producer.send_offsets_to_transaction({tp: OffsetAndMetadata(inputs[-1].offset + 1, "", -1)},
                                         consumer.group_metadata())
    producer.commit_transaction()
    assert consumer.committed(tp) == 5  # committed by the transaction, not by the consumer

    # An aborted transaction: written to the log, invisible to read_committed readers.
    producer.begin_transaction()
    producer.send(dst, key=b"k", value=b"aborted-1")
    producer.send(dst, key=b"k", value=b"aborted-2")
    producer.flush()
    producer.abort_transaction()

    # A later committed transaction is visible again past the abort marker.
    producer.begin_transaction()
    producer.send(dst, key=b"k", value=b"after-abort")
    producer.commit_transaction()
    producer.close()
    consumer.close()

    committed_reader = _consumer(kafka_bootstrap, isolation_level="read_committed")
    tps = _assigned(committed_reader, dst, 1)
    committed = [r.value for r in read_to_end(committed_reader, tps)]
    committed_reader.close()
    assert committed == [f"out-{i}".encode() for i in range(5)] + [b"after-abort"]

    raw_reader = _consumer(kafka_bootstrap, isolation_level="read_uncommitted")
    tps = _assigned(raw_reader, dst, 1)
    raw = [r.value for r in read_to_end(raw_reader, tps)]
    raw_reader.close()
    assert b"aborted-1" in raw and b"aborted-2" in raw  # the data was really written


def test_compacted_topic_reads_back_from_the_beginning(kafka_bootstrap, kafka_admin, unique_topic):
    topic = unique_topic("state", partitions=2, configs={"cleanup.policy": "compact"})
    described = kafka_admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, topic, configs={"cleanup.policy": None})])
    assert "compact" in str(described)

    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    expected = {}
    for round_ in range(3):
        for s in range(10):
            key, value = f"stream-{s}".encode(), f"state-{s}-v{round_}".encode()
            producer.send(topic, key=key, value=value)
            expected[key] = value
    producer.send(topic, key=b"stream-0", value=None)  # tombstone: stream-0 is gone
    del expected[b"stream-0"]
    producer.flush()
    producer.close()

    reader = _consumer(kafka_bootstrap)
    tps = _assigned(reader, topic, 2)
    table = {}
    for r in read_to_end(reader, tps):
        if r.value is None:
            table.pop(r.key, None)
        else:
            table[r.key] = r.value
    reader.close()
    assert table == expected


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_kafka_sh_lifecycle_is_idempotent(tmp_path):
    """up twice is harmless, status tells the truth, down twice is harmless (own ports/dir)."""
    have_jars = any((KAFKA_SH.parent / "lib").glob("kafka_2.13-*.jar"))
    if not shutil.which("java") or not (have_jars or shutil.which("mvn")):
        pytest.skip("kafka.sh needs java, and mvn unless deploy/kafka-local/lib is fetched")
    port = _free_port()
    env = dict(os.environ, KAFKA_PORT=str(port), KAFKA_CONTROLLER_PORT=str(_free_port()),
               KAFKA_LOCAL_DIR=str(tmp_path / "kafka"))

    def sh(*args):
        return subprocess.run(["bash", str(KAFKA_SH), *args], env=env, capture_output=True,
                              text=True, timeout=180)

    try:
        assert sh("status").returncode == 1
        assert sh("down").returncode == 0
        first = sh("up")
        assert first.returncode == 0, first.stderr
        assert sh("status").returncode == 0
        pid = (tmp_path / "kafka" / "kafka.pid").read_text().strip()
        second = sh("up")
        assert second.returncode == 0 and "already running" in second.stderr
        assert (tmp_path / "kafka" / "kafka.pid").read_text().strip() == pid
        # It listens on loopback only.
        conf = (tmp_path / "kafka" / "server.properties").read_text()
        assert f"PLAINTEXT://127.0.0.1:{port}" in conf and "0.0.0.0" not in conf
    finally:
        assert sh("down").returncode == 0
    assert sh("status").returncode == 1
    assert sh("down").returncode == 0
    assert sh("bogus").returncode == 2
