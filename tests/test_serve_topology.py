"""Partitions added to the input topic while serving: noticed within one metadata refresh (5 s), logged,
and served once the changelog has them too (--create-topics adds them), or refused with a clear exit 2."""

from __future__ import annotations

import time

import pytest

from streamer.kafka import topics as topic_admin
from streamer.kafka.routing import murmur2_partition
from streamer.kafka.topics import Topics
from tests.serve_support import (Deployment, Serve, assert_parity, committed_offsets, count_steps, end_offsets,
                                 event_messages, make_sequences, offline, predictions_by_key, produce, read_topic)
from tests.serve_support import saved_step_model

pytestmark = pytest.mark.kafka

F = 3


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    return saved_step_model(tmp_path_factory, "topology-model", F, 6, seed=41)


def _deployment(admin, partitions: int) -> Deployment:
    d = Deployment("grow", partitions)
    topic_admin.ensure(admin, Topics(d.input, d.output, d.dlq, d.changelog), create=True, partitions=partitions)
    return d


def _streams_on_new_partitions(n_old: int, n_new: int, count: int):
    """Streams whose murmur2 partition (of n_new) is one of the added ones."""
    seqs = make_sequences(count * n_new, 5, F, seed=9, prefix="new")
    return {sid: x for sid, x in seqs.items() if murmur2_partition(sid.encode(), n_new) >= n_old}


def test_added_partitions_are_served_after_the_changelog_gets_them(kafka_client, kafka_bootstrap, kafka_admin,
                                                                   small_model, tmp_path):
    model, model_dir = small_model
    d = _deployment(kafka_admin, 2)
    serve = Serve(model_dir, d, kafka_bootstrap, tmp_path, "--create-topics", client=kafka_client, name="grow")
    try:
        serve.wait_ready()
        old = make_sequences(6, 5, F, seed=8, prefix="old")
        produce(kafka_bootstrap, d.input, event_messages(old))
        kafka_admin.create_partitions({d.input: 4})
        grown = time.monotonic()
        new = _streams_on_new_partitions(2, 4, 6)
        produce(kafka_bootstrap, d.input, event_messages(new))  # a fresh producer sees 4 partitions
        want = offline(model, {**old, **new})
        total = sum(len(x) for x in want.values())
        records = read_topic(kafka_bootstrap, d.output, until=lambda rs: count_steps(rs) >= total, timeout_s=60)
        served = time.monotonic() - grown
        assert_parity(predictions_by_key(records), want)
        assert served < 30, f"the new partitions took {served:.0f}s to be served"  # minutes before the fix
        log = serve.log()
        assert "grew from 2 to 4 partitions" in log and "extended from 2 to 4 partitions" in log
        assert topic_admin.describe(kafka_admin, [d.changelog]) == {d.changelog: 4}
        assert serve.metric("streamer_kafka_input_partitions") == 4
        assert serve.metric("streamer_kafka_assigned_partitions") == 4
        assert serve.metric("streamer_kafka_recoveries_total") == 0  # no record refused for an unknown partition
        assert serve.metric("streamer_kafka_partitioner_mismatch_total") == 0  # before and after the growth
        deadline = time.monotonic() + 30
        while committed_offsets(kafka_bootstrap, d.group, d.input) != end_offsets(kafka_bootstrap, d.input):
            assert time.monotonic() < deadline
            time.sleep(0.3)
        assert serve.terminate() == 0, serve.log()[-3000:]
    finally:
        serve.kill()
        d.delete(kafka_admin)


def test_added_partitions_without_create_topics_stop_serve_with_one_clear_line(kafka_client, kafka_bootstrap,
                                                                               kafka_admin, small_model, tmp_path):
    _, model_dir = small_model
    d = _deployment(kafka_admin, 2)
    serve = Serve(model_dir, d, kafka_bootstrap, tmp_path, client=kafka_client, name="grow-refused")
    try:
        serve.wait_ready()
        kafka_admin.create_partitions({d.input: 3})
        t0 = time.monotonic()
        rc = serve.wait(timeout_s=60)
        assert rc == 2, serve.log()[-3000:]
        assert time.monotonic() - t0 < 30
        errors = [line for line in serve.log().splitlines() if line.startswith("streamer: error:")]
        assert len(errors) == 1 and "now has 3 partitions" in errors[0] and "--partitions 3" in errors[0]
        assert "--create-topics" in errors[0] and "Traceback" not in serve.log()
    finally:
        serve.kill()
        d.delete(kafka_admin)


def test_the_changelog_reader_reads_partitions_added_a_moment_ago(kafka_client, kafka_bootstrap, kafka_admin):
    """Restoring a changelog partition right after it was added: its leader may not be known (or elected)
    yet. The reader waits for it instead of failing the restore (which made serve rewind once)."""
    from streamer.kafka.client import make_clients
    from streamer.kafka.config import ClientTuning, Connection

    d = _deployment(kafka_admin, 1)
    clients = make_clients(kafka_client, Connection(kafka_bootstrap), ClientTuning(group_id=d.group), d.input)
    reader = clients.reader()
    try:
        read: list[int] = []
        for count in (3, 6, 9):
            kafka_admin.create_partitions({d.changelog: count})
            reader.read(d.changelog, list(range(count)), 20.0, lambda p, keys, values: read.append(p))
        assert read == []  # every partition empty, none refused
    finally:
        reader.close()
        d.delete(kafka_admin)
