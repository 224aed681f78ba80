"""Failures against the real broker, with serve as real processes: kill -9 mid-run and restart
(at-least-once and exactly-once), a member of a 3-process group killed mid-run (its streams go on
elsewhere from their checkpointed state), and the broker itself stopping for a while.

In every case: every (stream, step) prediction arrives and equals the offline prediction; under
exactly-once a read_committed reader sees each exactly once."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from streamer.kafka import topics as topic_admin
from streamer.kafka.topics import Topics
from tests.kafka_support import make_admin, unique_name
from tests.serve_support import (Deployment, Feeder, Serve, assert_parity, changelog_table, count_steps,
                                 make_sequences, offline, predictions_by_key, read_topic)
from tests.serve_support import saved_step_model

pytestmark = pytest.mark.kafka

F = 3
KAFKA_SH = Path(__file__).resolve().parents[1] / "deploy" / "kafka-local" / "kafka.sh"


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    return saved_step_model(tmp_path_factory, "recovery-model", F, 8, seed=5)


def _create(admin, partitions: int, prefix: str) -> Deployment:
    d = Deployment(prefix, partitions)
    topic_admin.ensure(admin, Topics(d.input, d.output, d.dlq, d.changelog), create=True, partitions=partitions)
    return d


def _wait_steps(bootstrap, topic, n, isolation="read_uncommitted", timeout_s=90.0, settle_s=0.0):
    records = read_topic(bootstrap, topic, isolation=isolation, until=lambda rs: count_steps(rs) >= n,
                         timeout_s=timeout_s, settle_s=settle_s)
    assert count_steps(records) >= n, f"only {count_steps(records)} of {n} step predictions within {timeout_s}s"
    return records


def _all_steps(seqs) -> int:
    return sum(len(x) for x in seqs.values())


@pytest.mark.parametrize("exactly_once", [False, True], ids=["at-least-once", "exactly-once"])
def test_kill_9_mid_run_then_restart_loses_nothing(kafka_client, kafka_bootstrap, kafka_admin, small_model,
                                                  tmp_path, exactly_once):
    model, model_dir = small_model
    d = _create(kafka_admin, 3, "crash")
    extra = ["--exactly-once", "--transactional-id", unique_name("txid")] if exactly_once else []
    isolation = "read_committed" if exactly_once else "read_uncommitted"
    seqs = make_sequences(24, 40, F, seed=11)
    total = _all_steps(seqs)
    first = Serve(model_dir, d, kafka_bootstrap, tmp_path, *extra, name="first", client=kafka_client)
    second = None
    try:
        first.wait_ready()
        feeder = Feeder(kafka_bootstrap, d.input, seqs, step_delay=0.06, end=True).start()
        partial = _wait_steps(kafka_bootstrap, d.output, total // 3, isolation, timeout_s=30)
        assert count_steps(partial) < total, "the run finished before the kill: not a mid-run crash"
        first.kill(dump=False)  # SIGKILL: no checkpoint, no goodbye
        second = Serve(model_dir, d, kafka_bootstrap, tmp_path, *extra, name="second", client=kafka_client,
                       instance_id=first.instance_id)  # the same instance restarted: its partitions at once
        feeder.join()
        records = _wait_steps(kafka_bootstrap, d.output, total, isolation, settle_s=2.0 if exactly_once else 0.0)
        got = predictions_by_key(records)
        assert_parity(got, offline(model, seqs), exactly_once=exactly_once)
        if not exactly_once:
            assert sum(map(len, got.values())) >= total  # duplicates allowed, gaps not
        assert second.metric("streamer_kafka_restored_streams_total") > 0  # it resumed from checkpoints
        assert second.terminate() == 0, second.log()[-3000:]
        # every stream ended: the changelog holds tombstones only
        assert changelog_table(kafka_bootstrap, d.changelog) == {}
    finally:
        for s in (first, second):
            if s is not None:
                s.kill()
        d.delete(kafka_admin)


def test_a_killed_group_member_s_streams_continue_elsewhere(kafka_client, kafka_bootstrap, kafka_admin, small_model,
                                                            tmp_path):
    model, model_dir = small_model
    d = _create(kafka_admin, 6, "rebal")
    seqs = make_sequences(36, 50, F, seed=12)
    total = _all_steps(seqs)
    members = [Serve(model_dir, d, kafka_bootstrap, tmp_path, name=f"member{i}", client=kafka_client)
               for i in range(3)]
    try:
        for m in members:
            m.wait_ready()
        deadline = time.monotonic() + 30  # the group settles: every member owns partitions
        while sum(m.metric("streamer_kafka_assigned_partitions") > 0 for m in members) < 3:
            assert time.monotonic() < deadline, "the three members never shared the partitions"
            time.sleep(0.3)
        feeder = Feeder(kafka_bootstrap, d.input, seqs, step_delay=0.08).start()
        partial = _wait_steps(kafka_bootstrap, d.output, total // 3, timeout_s=30)
        assert count_steps(partial) < total
        victim, survivors = members[0], members[1:]
        deadline = time.monotonic() + 30  # the victim has checkpointed streams of its own: they must move
        while victim.metric("streamer_kafka_changelog_records_total", kind="state") == 0:
            assert time.monotonic() < deadline, "the victim never checkpointed a stream"
            time.sleep(0.2)
        victim.kill(dump=False)
        feeder.join()
        records = _wait_steps(kafka_bootstrap, d.output, total, timeout_s=120)
        assert_parity(predictions_by_key(records), offline(model, seqs))
        # the victim's partitions were restored from the changelog by the survivors
        assert sum(s.metric("streamer_kafka_restored_streams_total") for s in survivors) > 0
        assert sum(s.metric("streamer_kafka_assigned_partitions") for s in survivors) == 6
        for s in survivors:
            assert s.terminate() == 0, s.log()[-3000:]
    finally:
        for m in members:
            m.kill()
        d.delete(kafka_admin)


def test_no_broker_at_start_up_is_retried_counted_and_stoppable(kafka_client, small_model, tmp_path):
    """Brokers unreachable: serve keeps retrying (not ready, failures counted), and SIGTERM still exits 0."""
    _, model_dir = small_model
    d = Deployment("nobroker", 1)
    serve = Serve(model_dir, d, f"127.0.0.1:{_free_port()}", tmp_path, name="nobroker", client=kafka_client)
    try:
        deadline = time.monotonic() + 30
        while serve.metric("streamer_kafka_errors_total", kind="connect") < 1:
            assert time.monotonic() < deadline and serve.proc.poll() is None, serve.log()[-2000:]
            time.sleep(0.3)
        assert serve.healthz() == 503
        assert "retrying" in serve.log()
        assert serve.terminate(timeout_s=30) == 0
    finally:
        serve.kill()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def private_broker(tmp_path):
    """A second broker on its own ports and directory, to stop and start (never the shared one)."""
    have_jars = any((KAFKA_SH.parent / "lib").glob("kafka_2.13-*.jar"))
    if not shutil.which("java") or not (have_jars or shutil.which("mvn")):
        pytest.skip("kafka.sh needs java, and mvn unless deploy/kafka-local/lib is fetched")
    port = _free_port()
    env = dict(os.environ, KAFKA_PORT=str(port), KAFKA_CONTROLLER_PORT=str(_free_port()),
               KAFKA_LOCAL_DIR=str(tmp_path / "kafka"), KAFKA_HEAP_OPTS="-Xmx384m -Xms128m")

    def sh(action: str) -> None:
        out = subprocess.run(["bash", str(KAFKA_SH), action], env=env, capture_output=True, text=True, timeout=240)
        assert out.returncode == 0, f"kafka.sh {action}: {out.stderr[-2000:]}"

    sh("up")
    try:
        yield f"127.0.0.1:{port}", sh
    finally:
        sh("down")


@pytest.mark.slow
def test_the_broker_stops_for_a_while_and_nothing_is_lost(kafka_client, private_broker, small_model, tmp_path):
    bootstrap, sh = private_broker
    model, model_dir = small_model
    admin = make_admin(bootstrap)
    try:
        d = _create(admin, 2, "outage")
    finally:
        admin.close()
    seqs = make_sequences(16, 60, F, seed=13)
    total = _all_steps(seqs)
    # records may wait 5 s for the broker: a longer outage fails the checkpoint and serve rewinds to the last one
    serve = Serve(model_dir, d, bootstrap, tmp_path, "--checkpoint-timeout", "5", name="outage",
                  client=kafka_client)
    try:
        serve.wait_ready()
        feeder = Feeder(bootstrap, d.input, seqs, step_delay=0.1).start()
        partial = _wait_steps(bootstrap, d.output, total // 4, timeout_s=30)
        assert count_steps(partial) < total
        sh("down")
        time.sleep(4)
        assert serve.proc.poll() is None, "serve died while the broker was away"
        sh("up")
        feeder.join()
        records = _wait_steps(bootstrap, d.output, total, timeout_s=120)
        assert_parity(predictions_by_key(records), offline(model, seqs))
        assert serve.proc.poll() is None
        assert serve.metric("streamer_kafka_errors_total", kind="connect") >= 1  # the outage was seen
        assert "no connection to any broker" in serve.log()
        assert serve.terminate() == 0, serve.log()[-3000:]
    finally:
        serve.kill()
