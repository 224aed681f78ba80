"""Static group membership through the real broker: a killed instance restarted with its --instance-id gets
its partitions back at once (not after the session timeout), a SIGTERM leaves the group (another instance
takes over at once) unless --stay-in-group, and a second live process with the same id is fenced and stops.

The session timeout here is 30 s: anything that waits for it would take 30 s; the bounds below are
half of that (not speed goals: the measured figures are in BENCHMARKS.md)."""

from __future__ import annotations

import time

import pytest

from streamer.kafka import topics as topic_admin
from streamer.kafka.topics import Topics
from tests.serve_support import (Deployment, Serve, assert_parity, count_steps, event_messages, make_sequences,
                                 offline, predictions_by_key, produce, read_topic)
from tests.serve_support import saved_step_model

pytestmark = pytest.mark.kafka

F = 3
SESSION = ["--session-timeout-ms", "30000", "--heartbeat-interval-ms", "1000"]  # after FAST_GROUP: these win


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    return saved_step_model(tmp_path_factory, "membership-model", F, 6, seed=51)


@pytest.fixture
def deployment(kafka_admin):
    made = []

    def make(partitions: int = 2) -> Deployment:
        d = Deployment("member", partitions)
        topic_admin.ensure(kafka_admin, Topics(d.input, d.output, d.dlq, d.changelog), create=True,
                           partitions=partitions)
        made.append(d)
        return d

    yield make
    for d in made:
        d.delete(kafka_admin)


def _members(admin, group: str) -> list[str]:
    """The group.instance.id (or member id) of each member of `group` now."""
    described = admin.describe_groups([group])[group]
    return [m.get("group_instance_id") or m["member_id"] for m in described.get("members", [])]


def _ready_in(serve: Serve, timeout_s: float = 60.0) -> float:
    t0 = time.monotonic()
    serve.wait_ready(timeout_s)
    return time.monotonic() - t0


def test_kill_9_then_restart_gets_the_partitions_back_at_once(kafka_client, kafka_bootstrap, deployment, small_model,
                                                              tmp_path):
    model, model_dir = small_model
    d = deployment()
    seqs = make_sequences(8, 10, F, seed=1, prefix="k")
    first = Serve(model_dir, d, kafka_bootstrap, tmp_path, *SESSION, client=kafka_client, name="first")
    second = None
    try:
        first.wait_ready()
        produce(kafka_bootstrap, d.input, event_messages(seqs, 0, 5))
        read_topic(kafka_bootstrap, d.output, until=lambda rs: count_steps(rs) >= 40)
        time.sleep(0.5)  # a checkpoint
        first.kill(dump=False)
        second = Serve(model_dir, d, kafka_bootstrap, tmp_path, *SESSION, client=kafka_client, name="second",
                       instance_id=first.instance_id)
        took = _ready_in(second)
        assert took < 15, f"restart to ready took {took:.1f}s: the session timeout (30 s) was waited out"
        assert second.metric("streamer_kafka_assigned_partitions") == 2
        produce(kafka_bootstrap, d.input, event_messages(seqs, 5))
        records = read_topic(kafka_bootstrap, d.output, until=lambda rs: count_steps(rs) >= 80)
        assert_parity(predictions_by_key(records), offline(model, seqs))
        assert second.terminate() == 0, second.log()[-3000:]
    finally:
        for s in (first, second):
            if s is not None:
                s.kill()


def test_sigterm_leaves_the_group_so_another_instance_takes_over_at_once(kafka_client, kafka_bootstrap, kafka_admin,
                                                                         deployment, small_model, tmp_path):
    _, model_dir = small_model
    d = deployment()
    leaving = Serve(model_dir, d, kafka_bootstrap, tmp_path, *SESSION, client=kafka_client, name="leaving")
    other = None
    try:
        leaving.wait_ready()
        assert _members(kafka_admin, d.group) == [leaving.instance_id]
        assert leaving.terminate() == 0, leaving.log()[-3000:]
        assert _members(kafka_admin, d.group) == []  # a static member that left: not waiting for the timeout
        other = Serve(model_dir, d, kafka_bootstrap, tmp_path, *SESSION, client=kafka_client, name="other")
        assert _ready_in(other) < 15
        assert other.metric("streamer_kafka_assigned_partitions") == 2
        assert other.terminate() == 0
    finally:
        for s in (leaving, other):
            if s is not None:
                s.kill()


def test_stay_in_group_keeps_the_membership_for_a_restart(kafka_client, kafka_bootstrap, kafka_admin, deployment,
                                                          small_model, tmp_path):
    _, model_dir = small_model
    d = deployment()
    staying = Serve(model_dir, d, kafka_bootstrap, tmp_path, *SESSION, "--stay-in-group", client=kafka_client,
                    name="staying")
    again = None
    try:
        staying.wait_ready()
        assert staying.terminate() == 0, staying.log()[-3000:]
        assert _members(kafka_admin, d.group) == [staying.instance_id]  # still a member until the session times out
        again = Serve(model_dir, d, kafka_bootstrap, tmp_path, *SESSION, "--stay-in-group", client=kafka_client,
                      name="again", instance_id=staying.instance_id)
        assert _ready_in(again) < 15
        assert again.metric("streamer_kafka_rebalances_total", event="revoked") <= 1
        assert again.terminate() == 0
    finally:
        for s in (staying, again):
            if s is not None:
                s.kill()


def test_two_live_processes_with_one_instance_id_the_older_is_fenced_and_stops(kafka_client, kafka_bootstrap,
                                                                               deployment, small_model, tmp_path):
    model, model_dir = small_model
    d = deployment()
    seqs = make_sequences(6, 8, F, seed=2, prefix="f")
    older = Serve(model_dir, d, kafka_bootstrap, tmp_path, client=kafka_client, name="older")
    newer = None
    try:
        older.wait_ready()
        newer = Serve(model_dir, d, kafka_bootstrap, tmp_path, client=kafka_client, name="newer",
                      instance_id=older.instance_id)
        newer.wait_ready()
        produce(kafka_bootstrap, d.input, event_messages(seqs))
        assert older.wait(timeout_s=60) == 2, older.log()[-3000:]
        errors = [line for line in older.log().splitlines() if line.startswith("streamer: error:")]
        assert len(errors) == 1 and "fenced" in errors[0] and "--instance-id" in errors[0]
        records = read_topic(kafka_bootstrap, d.output, until=lambda rs: count_steps(rs) >= 48)
        assert_parity(predictions_by_key(records), offline(model, seqs))
        assert newer.proc.poll() is None
        assert newer.terminate() == 0, newer.log()[-3000:]
    finally:
        for s in (older, newer):
            if s is not None:
                s.kill()
