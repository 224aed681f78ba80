"""Broker-free tests of the Kafka transport's own logic: the changelog codec, the checkpoint order
(against a producer double that records what it is asked to do, in order), restore's model-change
policy, and the connection/topic settings. The real-broker behaviour is in test_serve_kafka.py and
test_serve_recovery.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from streamer.errors import UserError
from streamer.kafka import changelog, kafka_python
from streamer.kafka.checkpoint import Checkpoint, DeliveryError
from streamer.kafka.client import ClientError
from streamer.kafka.config import ClientTuning, Connection, connection_from_args
from streamer.kafka.restore import ModelChanged, Restorer
from streamer.kafka.topics import Topics
from streamer.state import StateMismatch, StateStore, StreamRecord

CL = "grp-events-changelog"


class RecordingProducer:
    """Stands in for a `streamer.kafka.client.Producer` where only the order of calls matters. Deliveries
    resolve at once, or (auto=False) when `resolve()` is called."""

    def __init__(self, fail_topic: str | None = None, auto: bool = True, background_sends: bool = True):
        self.calls: list[tuple] = []
        self.fail_topic = fail_topic
        self.auto = auto
        self.background_sends = background_sends
        self.unresolved: list = []

    def resolve(self):
        for fn in self.unresolved:
            fn()
        self.unresolved.clear()

    def send(self, topic, key, value, partition, on_done):
        self.calls.append(("send", topic, key, value, partition))
        error = DeliveryError("broker said no") if topic == self.fail_topic else None
        if self.auto:
            on_done(error)
        else:
            self.unresolved.append(lambda: on_done(error))

    def send_many(self, topic, keys, values, partitions, on_done):
        for i, (key, value) in enumerate(zip(keys, values)):
            self.send(topic, key, value, None if partitions is None else partitions[i], on_done)

    def poll(self):
        pass

    def flush(self, timeout_s=None):
        self.resolve()
        self.calls.append(("flush",))
        return True

    def begin_transaction(self):
        self.calls.append(("begin",))

    def send_offsets_to_transaction(self, topic, offsets, group_metadata):
        self.calls.append(("offsets", topic, dict(offsets), group_metadata))

    def commit_transaction(self):
        self.calls.append(("commit",))

    def abort_transaction(self):
        self.calls.append(("abort",))

    def kinds(self):
        out = []
        for c in self.calls:
            if c[0] == "send":
                out.append("tombstone" if c[1] == CL and c[3] is None else "state" if c[1] == CL else "output")
            else:
                out.append(c[0])
        return out


def store_with(streams: dict[str, int], version="v1", size=4) -> StateStore:
    """A store whose streams (id -> partition) have each applied step 0."""
    st = StateStore(size, model_version=version)
    ids = list(streams)
    slots, _, _ = st.acquire(ids, 1.0, np.array([streams[s] for s in ids]))
    st.write(slots, np.full((len(ids), size), 0.5, np.float32), np.zeros(len(ids), np.int64))
    return st


OFFSETS = {0: 10}  # input partition -> next offset


# --------------------------------------------------------------------------- codec


def test_changelog_codec_round_trip_and_fold():
    rec = StreamRecord("s-1", np.arange(4, dtype=np.float32), last_step=7, last_seen=12.5, model_version="abc",
                       partition=3)
    back = changelog.decode(changelog.encode_key("s-1"), changelog.encode(rec))
    assert back.stream_id == "s-1" and back.last_step == 7 and back.model_version == "abc" and back.partition == 3
    assert np.array_equal(back.state, rec.state)
    with pytest.raises(StateMismatch):
        changelog.decode(b"another-stream", changelog.encode(rec))
    with pytest.raises(StateMismatch):
        changelog.decode(b"s-1", b"{not json")
    log = [(b"a", b"1"), (b"b", b"1"), (b"a", None), (b"b", b"2"), (None, b"x"), (b"a", b"3"), (b"c", b"1"),
           (b"c", None)]
    assert changelog.fold(log) == {b"a": b"3", b"b": b"2"}


# --------------------------------------------------------------------------- checkpoint order


def test_at_least_once_order_outputs_changelog_flush_then_offsets():
    producer = RecordingProducer()
    cp = Checkpoint(producer, CL, exactly_once=False)
    st = store_with({"a": 0, "b": 1})
    cp.send_many("predictions", [b"a", b"b"], [b"{}", b"{}"])
    committed = []
    assert cp.commit(st, OFFSETS, lambda o: (committed.append(dict(o)), producer.calls.append(("commit_offsets",))))
    assert producer.kinds() == ["output", "output", "state", "state", "flush", "commit_offsets"]
    states = [c for c in producer.calls if c[0] == "send" and c[1] == CL]
    assert {(c[2], c[4]) for c in states} == {(b"a", 0), (b"b", 1)}  # keyed by stream, on its input partition
    rec = StreamRecord.from_bytes(states[0][3])
    assert rec.model_version == "v1" and rec.last_step == 0
    assert committed == [OFFSETS]
    # nothing changed since: no changelog records, nothing to flush but harmless
    producer.calls.clear()
    cp.commit(st, {}, lambda o: pytest.fail("no offsets to commit"))
    assert "state" not in producer.kinds()


def test_a_failed_delivery_fails_the_checkpoint_before_the_offsets():
    producer = RecordingProducer(fail_topic="predictions")
    cp = Checkpoint(producer, CL, exactly_once=False)
    cp.send("predictions", b"a", b"{}")
    with pytest.raises(DeliveryError):
        cp.commit(store_with({"a": 0}), OFFSETS, lambda o: pytest.fail("offsets committed after a lost record"))


@pytest.mark.parametrize("background", [True, False], ids=["sender-thread", "inline"])
def test_the_pipelined_checkpoint_commits_only_after_every_record_is_acknowledged(background):
    producer = RecordingProducer(auto=False, background_sends=background)
    cp = Checkpoint(producer, CL, exactly_once=False)
    st = store_with({"a": 0, "b": 1})
    cp.send_many("predictions", [b"a", b"b"], [b"{}", b"{}"])
    assert cp.begin(st, OFFSETS)  # changelog records handed to a sender thread, nothing waited for
    cp.wait_sent()
    assert producer.kinds() == ["output", "output", "state", "state"]
    assert not cp.begin(st, OFFSETS)  # one at a time
    cp.send("predictions", b"a", b"{}")  # processing goes on meanwhile
    checkpointed, later = producer.unresolved[:4], producer.unresolved[4:]
    for deliver in checkpointed[:3]:
        deliver()
    assert cp.due() is None  # one of its records is still in flight
    checkpointed[3]()
    assert cp.due() == OFFSETS  # the later record does not hold it up
    cp.committed(True)
    assert cp.due() is None
    for deliver in later:
        deliver()
    failing = Checkpoint(RecordingProducer(fail_topic=CL), CL, exactly_once=False)
    failing.begin(store_with({"a": 0}), OFFSETS)
    with pytest.raises(DeliveryError):
        failing.due()


def test_tombstones_wait_for_the_commit_that_covers_the_end():
    producer = RecordingProducer()
    cp = Checkpoint(producer, CL, exactly_once=False)
    st = store_with({"a": 0, "b": 0})
    cp.commit(st, OFFSETS, lambda o: None)
    producer.calls.clear()

    st.free_ids(["a"])  # stream a ended in this interval
    cp.commit(st, OFFSETS, lambda o: None)
    assert "tombstone" not in producer.kinds()  # not yet: its end event's offset was only committed now
    producer.calls.clear()

    fail = [True]

    def commit(o):
        if fail[0]:
            raise ClientError("CommitFailedError: rebalance", kind="commit")

    st.free_ids(["b"])  # b ends; this interval's commit fails
    assert cp.commit(st, OFFSETS, commit) is False
    assert producer.kinds() == ["tombstone", "flush"]  # a's tombstone: covered by the previous commit
    assert producer.calls[0][2] == b"a"
    producer.calls.clear()
    cp.commit(st, OFFSETS, commit)
    assert "tombstone" not in producer.kinds()  # b still waits: no commit has covered its end
    fail[0] = False
    cp.commit(st, OFFSETS, commit)
    producer.calls.clear()
    cp.commit(st, {}, commit)
    assert producer.kinds() == ["tombstone", "flush"] and producer.calls[0][2] == b"b"


def test_a_restarted_stream_is_not_deleted_by_its_old_tombstone():
    producer = RecordingProducer()
    cp = Checkpoint(producer, CL, exactly_once=False)
    st = store_with({"a": 0})
    cp.commit(st, OFFSETS, lambda o: None)
    st.free_ids(["a"])
    cp.commit(st, OFFSETS, lambda o: None)  # a's tombstone is now covered
    producer.calls.clear()
    slots, _, _ = st.acquire(["a"], 2.0, np.array([0]))  # a starts again
    st.write(slots, np.ones((1, 4), np.float32), np.array([0]))
    cp.commit(st, OFFSETS, lambda o: None)
    # the new record replaces the old one; the covered tombstone is dropped (one record per key and checkpoint)
    assert producer.kinds() == ["state", "flush"]
    producer.calls.clear()
    cp.commit(st, OFFSETS, lambda o: None)
    assert "tombstone" not in producer.kinds()  # never written after the live record


def test_exactly_once_puts_everything_in_one_transaction():
    producer = RecordingProducer()
    cp = Checkpoint(producer, CL, exactly_once=True)
    st = store_with({"a": 0, "b": 0})
    cp.send_many("predictions", [b"a"], [b"{}"])
    cp.send("events.dlq", None, b"{}")
    st.free_ids(["b"])
    cp.commit_transaction(st, OFFSETS, "group-metadata")
    assert producer.kinds() == ["begin", "output", "output", "tombstone", "state", "flush", "offsets", "commit"]
    assert producer.calls[-2] == ("offsets", "events", OFFSETS, "group-metadata")
    producer.calls.clear()
    cp.commit_transaction(st, {}, "group-metadata")  # nothing new: no empty transaction
    assert producer.calls == []
    cp.send("predictions", b"a", b"{}")
    cp.abort()
    assert producer.kinds() == ["begin", "output", "abort"]


# --------------------------------------------------------------------------- restore policy


def _table(*records: StreamRecord) -> dict[bytes, bytes]:
    return {changelog.encode_key(r.stream_id): r.to_bytes() for r in records}


def test_restore_loads_state_and_resets_another_models_state_keeping_the_step():
    st = StateStore(4, model_version="new")
    same = StreamRecord("a", np.full(4, 0.25, np.float32), 5, 1.0, "new", 0)
    other = StreamRecord("b", np.full(6, 0.5, np.float32), 9, 1.0, "old", 0)
    stats = Restorer(None, CL).load(st, {0: {**_table(same, other), b"c": b"garbage"}})
    assert (stats.streams, stats.reset, stats.invalid) == (2, 1, 1)
    a, b = st.slot_of("a"), st.slot_of("b")
    assert np.allclose(st.state[a], 0.25) and st.last_step[a] == 5
    assert np.allclose(st.state[b], st.initial_state) and st.last_step[b] == 9  # dedup still holds
    assert [sid for sid, _ in st.take_changes().updated] == ["b"]  # re-checkpointed under the new version


def test_restore_refuses_another_models_state_when_asked():
    st = StateStore(4, model_version="new")
    other = StreamRecord("b", np.full(6, 0.5, np.float32), 9, 1.0, "old", 0)
    with pytest.raises(ModelChanged, match="made by model old"):
        Restorer(None, CL, on_model_change="refuse").load(st, {0: _table(other)})
    assert len(st) == 0


# --------------------------------------------------------------------------- settings


def test_connection_settings_map_to_kafka_python_and_refuse_bad_combinations(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    conn = Connection("k1:9093,k2:9093", "SASL_SSL", ssl_cafile=str(ca), sasl_mechanism="SCRAM-SHA-512",
                      sasl_username="svc", sasl_password="s3cret").validate()
    kw = conn.client_kwargs()
    assert kw["bootstrap_servers"] == ["k1:9093", "k2:9093"]
    assert kw["security_protocol"] == "SASL_SSL" and kw["ssl_cafile"] == str(ca)
    assert (kw["sasl_mechanism"], kw["sasl_plain_username"], kw["sasl_plain_password"]) == ("SCRAM-SHA-512", "svc",
                                                                                              "s3cret")
    assert "s3cret" not in repr(conn)
    assert "sasl_mechanism" not in Connection("k:9092").validate().client_kwargs()
    bad = [Connection("k:9092", "SASL_SSL", sasl_username="u", sasl_password="p"),  # no mechanism
           Connection("k:9092", "SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_username="u"),  # no password
           Connection("k:9092", sasl_mechanism="PLAIN", sasl_username="u", sasl_password="p"),  # not SASL_*
           Connection("k:9092", ssl_cafile=str(ca)),  # TLS file without TLS
           Connection("k:9092", "SSL", ssl_cafile=str(tmp_path / "missing.pem")),
           Connection("k:9092", "SSL", ssl_certfile=str(ca)),  # cert without key
           Connection("kafka")]  # no port
    for c in bad:
        with pytest.raises(UserError):
            c.validate()
    tuning = ClientTuning(exactly_once=True, transactional_id="t-1")
    assert kafka_python.consumer_kwargs(conn, tuning)["isolation_level"] == "read_committed"
    assert kafka_python.consumer_kwargs(conn, tuning)["enable_auto_commit"] is False
    assert kafka_python.producer_kwargs(conn, tuning)["transactional_id"] == "t-1"
    assert kafka_python.consumer_kwargs(conn, ClientTuning())["isolation_level"] == "read_uncommitted"
    assert "transactional_id" not in kafka_python.producer_kwargs(conn, ClientTuning())
    static = ClientTuning(group_instance_id="member-1", metadata_max_age_ms=4000, max_request_size=1 << 20)
    assert kafka_python.consumer_kwargs(conn, static)["group_instance_id"] == "member-1"
    assert kafka_python.consumer_kwargs(conn, static)["metadata_max_age_ms"] == 4000
    assert kafka_python.producer_kwargs(conn, static)["max_request_size"] == 1 << 20


def test_kafka_python_errors_translate_to_client_errors():
    from kafka.errors import FencedInstanceIdError, GroupAuthorizationFailedError, KafkaTimeoutError

    from streamer.kafka.client import ClientTimeout, FatalClientError, Fenced

    assert isinstance(kafka_python.translate(FencedInstanceIdError(), "poll"), Fenced)
    refused = kafka_python.translate(GroupAuthorizationFailedError("grp"), "poll")
    assert type(refused) is FatalClientError and refused.name == "GroupAuthorizationFailedError"
    assert isinstance(refused.cause, GroupAuthorizationFailedError)  # what streamer.kafka.failures reads
    assert type(kafka_python.translate(KafkaTimeoutError("slow"), "connect")) is ClientTimeout


def test_connection_settings_map_to_librdkafka(tmp_path):
    confluent = pytest.importorskip("streamer.kafka.confluent")
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    conn = Connection("k1:9093, k2:9093", "SASL_SSL", ssl_cafile=str(ca), sasl_mechanism="SCRAM-SHA-512",
                      sasl_username="svc", sasl_password="s3cret", ssl_check_hostname=False).validate()
    c = conn.librdkafka_config()
    assert c["bootstrap.servers"] == "k1:9093,k2:9093" and c["security.protocol"] == "sasl_ssl"
    assert (c["ssl.ca.location"], c["ssl.endpoint.identification.algorithm"]) == (str(ca), "none")
    assert (c["sasl.mechanism"], c["sasl.username"], c["sasl.password"]) == ("SCRAM-SHA-512", "svc", "s3cret")
    plain = Connection("k:9092").validate().librdkafka_config()
    assert "sasl.mechanism" not in plain and "ssl.ca.location" not in plain
    eos = ClientTuning(exactly_once=True, transactional_id="t-1", transaction_timeout_ms=10000,
                       delivery_timeout_ms=30000, group_instance_id="member-1")
    consumer = confluent.consumer_config(conn, eos)
    assert consumer["isolation.level"] == "read_committed" and consumer["enable.auto.commit"] is False
    assert consumer["partition.assignment.strategy"] == "cooperative-sticky"
    assert consumer["group.instance.id"] == "member-1"
    producer = confluent.producer_config(conn, eos)
    assert producer["transactional.id"] == "t-1" and producer["enable.idempotence"] is True
    assert producer["message.timeout.ms"] == 10000  # capped at transaction.timeout.ms, as librdkafka requires
    assert producer["partitioner"] == "murmur2_random"  # the Java clients' partitioner: same key, same partition
    alo = ClientTuning()
    assert confluent.consumer_config(conn, alo)["isolation.level"] == "read_uncommitted"
    assert "transactional.id" not in confluent.producer_config(conn, alo)
    assert "group.instance.id" not in confluent.consumer_config(conn, alo)
    for config in (confluent.consumer_config(conn, alo), confluent.producer_config(conn, alo)):
        assert config["topic.metadata.refresh.interval.ms"] == 5000  # added partitions seen in seconds
    assert confluent.producer_config(conn, alo)["message.max.bytes"] == alo.max_request_size
    assert confluent.reader_config(conn, alo)["group.id"] == alo.group_id  # (a group serve has an ACL for)
    assert "debug" not in confluent.consumer_config(conn, alo)
    assert confluent.consumer_config(conn, ClientTuning(client_debug=True))["debug"] == "generic,broker,security,conf"


def test_an_unknown_kafka_client_from_the_environment_is_a_clear_error(monkeypatch):
    from streamer.cli import build_parser

    monkeypatch.setenv("STREAMER_KAFKA_CLIENT", "rdkafka")
    with pytest.raises(UserError, match="STREAMER_KAFKA_CLIENT.*kafka-python, confluent"):
        build_parser()


def test_serve_flags_come_from_the_environment(monkeypatch):
    from streamer.cli import build_parser

    monkeypatch.setenv("STREAMER_BOOTSTRAP_SERVERS", "b:9092")
    monkeypatch.setenv("STREAMER_MODEL", "/models/m")
    monkeypatch.setenv("STREAMER_SASL_PASSWORD", "from-env")
    monkeypatch.setenv("STREAMER_EXACTLY_ONCE", "1")
    monkeypatch.setenv("STREAMER_INPUT_TOPIC", "ev")
    monkeypatch.setenv("STREAMER_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("STREAMER_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("STREAMER_SASL_USERNAME", "u")
    args = build_parser().parse_args(["serve"])
    assert (args.bootstrap_servers, args.model, args.exactly_once, args.input_topic) == (
        "b:9092", "/models/m", True, "ev")
    assert connection_from_args(args).sasl_password == "from-env"
    assert args.metrics_host == "127.0.0.1" and args.metrics_port == 8000


def test_topic_names():
    t = Topics.named("grp", "events")
    assert t.all() == ["events", "predictions", "events.dlq", "grp-events-changelog"]
    with pytest.raises(UserError):
        Topics.named("grp", "events", output="events")
    with pytest.raises(UserError):
        Topics.named("grp", "bad topic")


# --------------------------------------------------------------------------- librdkafka events


def test_librdkafka_statistics_and_error_events_map_to_connections_lag_and_failures():
    """What the confluent client makes of librdkafka's statistics (connections up, per-partition high
    watermark or, under read_committed, last stable offset) and of its error events (all brokers down:
    no connection; an authentication failure: fatal, raised on the main thread; anything else: counted)."""
    rdkafka = pytest.importorskip("streamer.kafka.rdkafka")
    from confluent_kafka import KafkaError
    from prometheus_client import CollectorRegistry

    from streamer.kafka.client import FatalClientError, Fenced
    from streamer.kafka.metrics import KafkaMetrics

    metrics = KafkaMetrics(CollectorRegistry())
    events = rdkafka._Events(metrics, "events", committed_reads=True)
    stats = {"brokers": {"127.0.0.1:9092/bootstrap": {"source": "configured", "state": "UP"},
                         "127.0.0.1:9092/1": {"source": "learned", "state": "UP"},
                         "GroupCoordinator": {"source": "logical", "state": "UP"}},
             "topics": {"events": {"partitions": {"0": {"hi_offset": 50, "ls_offset": 40},
                                                  "1": {"hi_offset": -1, "ls_offset": -1},
                                                  "-1": {"hi_offset": -1, "ls_offset": -1}}}}}
    events.on_stats(json.dumps(stats))
    assert events.connections == 2 and events.highwater == {0: 40}
    assert events.partitions == 2  # the topic's partitions in the client's metadata (-1: unassigned messages)
    events.on_error(KafkaError(KafkaError._ALL_BROKERS_DOWN, "all down"))
    assert events.down
    stats["brokers"] = {k: {**v, "state": "DOWN"} for k, v in stats["brokers"].items()}
    events.on_stats(json.dumps(stats))
    assert events.down and events.connections == 0
    events.on_error(KafkaError(KafkaError._MSG_TIMED_OUT, "timed out"))
    assert metrics.errors.labels("poll")._value.get() == 1
    events.raise_fatal()  # nothing fatal yet
    events.on_error(KafkaError(KafkaError._AUTHENTICATION, "SASL authentication error: bad password"))
    with pytest.raises(FatalClientError, match="_AUTHENTICATION"):
        events.raise_fatal()
    refused = rdkafka.translate(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "no"), "poll", topic="events")
    assert refused.fatal and refused.kind == "poll" and refused.name == "TOPIC_AUTHORIZATION_FAILED"
    assert refused.topic == "events" and refused.cause.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    timeout = rdkafka.translate(KafkaError(KafkaError._TIMED_OUT, "slow"), "connect")
    assert not timeout.fatal and type(timeout).__name__ == "ClientTimeout"
    # a fenced static member: FENCED_INSTANCE_ID, or the consumer's _FATAL error that names it
    for err in (KafkaError(KafkaError.FENCED_INSTANCE_ID, "fenced"),
                KafkaError(KafkaError._FATAL, "Fatal error: Broker: Static consumer fenced by other consumer with "
                                              "same group.instance.id", fatal=True)):
        assert isinstance(rdkafka.translate(err, "poll"), Fenced)
    assert type(rdkafka.translate(KafkaError(KafkaError._FATAL, "other", fatal=True), "poll")) is FatalClientError


def test_librdkafka_error_events_are_explained_in_one_line_and_probed_only_while_starting():
    """With the factory (`Clients.explain`), an error event that retrying cannot fix becomes the one-line
    UserError of streamer.kafka.failures, raised on the main thread; a transport error is probed (one
    connection the client's way) only while serve starts, and at most every PROBE_EVERY_S."""
    rdkafka = pytest.importorskip("streamer.kafka.rdkafka")
    from confluent_kafka import KafkaError

    from streamer.kafka import acls
    from streamer.kafka.client import make_clients

    conn = Connection("127.0.0.1:1", "SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="svc",
                      sasl_password="s3cret").validate()
    needs = acls.serve_needs(Topics.named("grp", "events"), "grp")
    clients = make_clients("confluent", conn, ClientTuning(group_id="grp"), "events", needs=needs)
    probed = []
    clients.explain = lambda err, probe: probed.append(probe) or type(clients).explain(clients, err, probe=False)
    events = rdkafka._Events(clients=clients)
    events.on_error(KafkaError(KafkaError._TRANSPORT, "connection refused"))
    events.on_error(KafkaError(KafkaError._TRANSPORT, "connection refused"))
    assert probed == [True, False] and events.fatal is None  # probed once, then waited out
    clients.serving()
    events._probed = -1e9
    events.on_error(KafkaError(KafkaError._TRANSPORT, "connection refused"))
    assert probed[-1] is False
    events.on_error(KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED, "Broker: Group authorization failed"))
    with pytest.raises(UserError, match=r"^not authorized: User:svc may not Read on group grp "
                                        r"\(GROUP_AUTHORIZATION_FAILED\); grant it"):
        events.raise_fatal()
    assert "s3cret" not in str(events.fatal)
