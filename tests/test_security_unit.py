"""Security without a broker: secrets never on the command line nor in log lines, the ACL lists and their
kafka-acls.sh lines, and how failures.py words (or retries) kafka-python and confluent-kafka errors.
The same code against a real secured broker: tests/test_security.py."""

from __future__ import annotations

import io
import logging
import socket
import threading

import pytest
from kafka import errors as ke

from streamer.cli import main
from streamer.errors import UserError
from streamer.kafka import acls
from streamer.kafka.checkpoint import DeliveryError
from streamer.kafka.config import Connection
from streamer.kafka.failures import explain
from streamer.kafka.probe import probe
from streamer.kafka.secrets import SecretMask, mask_in_logs, read_secret_file
from streamer.kafka.topics import Topics

SECRET = "s3cret-Pa55"
TOPICS = Topics.named("grp", "ev")


def _conn(server="127.0.0.1:1", **kw) -> Connection:
    settings = {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "svc",
                "sasl_password": SECRET, **kw}
    return Connection(server, **settings).validate()


# --------------------------------------------------------------------------- secrets


@pytest.mark.parametrize("argv", [
    ["serve", "--model", "m", "--bootstrap-servers", "k:9092", "--sasl-password", SECRET],
    ["topics", "create", "--bootstrap-servers", "k:9092", f"--sasl-password={SECRET}"],
    ["produce", "--bootstrap-servers", "k:9092", "--ssl-key-password", SECRET],
])
def test_password_flags_are_refused_with_what_to_use_instead(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "would show the secret to anyone who can list processes (ps)" in err
    assert ("STREAMER_SASL_PASSWORD" in err and "--sasl-password-file" in err) or "--ssl-key-password-file" in err
    assert SECRET not in err


def test_the_password_comes_from_a_file_or_the_environment(tmp_path, monkeypatch):
    from streamer.cli import build_parser
    from streamer.kafka.config import connection_from_args

    secret = tmp_path / "pw"
    secret.write_text(SECRET + "\n")
    base = ["topics", "describe", "--bootstrap-servers", "k:9092", "--security-protocol", "SASL_SSL",
            "--sasl-mechanism", "SCRAM-SHA-256", "--sasl-username", "svc"]
    monkeypatch.setenv("STREAMER_SASL_PASSWORD", "from-env")
    assert connection_from_args(build_parser().parse_args(base)).sasl_password == "from-env"
    args = build_parser().parse_args(base + ["--sasl-password-file", str(secret)])
    assert connection_from_args(args).sasl_password == SECRET  # the file wins; its newline is not part of it
    assert SECRET not in repr(connection_from_args(args))
    (tmp_path / "empty").write_text("\n")
    for bad in (tmp_path / "empty", tmp_path / "missing"):
        with pytest.raises(UserError, match="--sasl-password-file"):
            read_secret_file(str(bad), "--sasl-password-file")


def test_kafka_pythons_debug_configuration_line_is_masked():
    """kafka-python logs its whole configuration, the password included, at DEBUG."""
    from kafka import KafkaAdminClient

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    root, kafka_logger = logging.getLogger(), logging.getLogger("kafka")
    old_level = kafka_logger.level
    root.addHandler(handler)
    kafka_logger.setLevel(logging.DEBUG)
    mask = mask_in_logs([SECRET])
    try:
        with pytest.raises(ke.KafkaError):
            KafkaAdminClient(**{**_conn().client_kwargs(), "bootstrap_timeout_ms": 300})
        logging.getLogger("streamer.test").error("failed with %s", SECRET, exc_info=ValueError(f"bad {SECRET}"))
    finally:
        for h in root.handlers:
            h.removeFilter(mask)
        root.removeHandler(handler)
        kafka_logger.setLevel(old_level)
    text = out.getvalue()
    assert "Starting KafkaAdminClient with configuration" in text and "'sasl_plain_password': '***'" in text
    assert SECRET not in text and "bad ***" in text


def test_secret_mask_leaves_other_records_alone():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "user %s at %d", ("svc", 3), None)
    assert SecretMask([SECRET, None, ""]).filter(record) and record.getMessage() == "user svc at 3"


# --------------------------------------------------------------------------- ACLs


def test_serve_needs_least_privilege_and_their_kafka_acls_lines():
    needs = acls.serve_needs(TOPICS, "grp", exactly_once=True)
    lines = [n.kafka_acls("User:svc", "k:9093") for n in needs]
    head = "kafka-acls.sh --bootstrap-server k:9093 --command-config admin.properties --add --allow-principal User:svc"
    assert lines == [
        f"{head} --operation Read --operation Describe --topic ev",
        f"{head} --operation Write --operation Describe --operation DescribeConfigs --topic predictions",
        f"{head} --operation Write --operation Describe --operation DescribeConfigs --topic events.dlq",
        f"{head} --operation Read --operation Write --operation Describe --operation DescribeConfigs "
        "--topic grp-ev-changelog",
        f"{head} --operation Read --group grp",
        f"{head} --operation Write --operation Describe --transactional-id streamer-grp-ev- "
        "--resource-pattern-type prefixed"]
    assert not any(n.resource == acls.CLUSTER for n in needs)  # nothing on the cluster
    assert acls.serve_needs(TOPICS, "grp", exactly_once=False)[-1].resource == acls.GROUP
    assert acls.serve_needs(TOPICS, "grp", transactional_id="t-1")[-1] == acls.Need(
        acls.TRANSACTIONAL_ID, "t-1", ("Write", "Describe"))
    assert all("Create" in n.operations for n in acls.serve_needs(TOPICS, "grp", create_topics=True)[:4])


def test_topics_acls_prints_the_lines(capsys):
    assert main(["topics", "acls", "--input-topic", "ev", "--group-id", "grp", "--principal", "User:svc",
                 "--producer-principal", "User:gen", "--exactly-once", "--bootstrap-servers", "k:9093"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 7 and all(line.startswith("kafka-acls.sh --bootstrap-server k:9093 ") for line in lines)
    assert lines[-1].endswith("--allow-principal User:gen --operation Write --operation Describe --topic ev")


def test_missing_topic_access_from_authorized_operations():
    needs = acls.serve_needs(TOPICS, "grp")
    described = [{"name": "ev", "error_code": 0, "authorized_operations": ["READ", "DESCRIBE"]},
                 {"name": "predictions", "error_code": 0, "authorized_operations": ["DESCRIBE", "WRITE"]},
                 {"name": "events.dlq", "error_code": 29, "authorized_operations": None},
                 {"name": "grp-ev-changelog", "error_code": 0, "authorized_operations": None}]  # old broker
    missing = acls.missing_topic_access(described, needs)
    assert [(n.name, ops) for n, ops in missing] == [
        ("predictions", ("DescribeConfigs",)), ("events.dlq", ("Write", "Describe", "DescribeConfigs"))]
    line = acls.missing_access_line(missing, _conn())
    assert "User:svc lacks ACLs for topic predictions: DescribeConfigs; topic events.dlq: Write" in line
    assert "--operation DescribeConfigs --topic predictions" in line and "\n" not in line


# --------------------------------------------------------------------------- failures: kafka-python


def test_kafka_python_failures_in_one_line_naming_user_resource_and_operation():
    conn, needs = _conn("k:9093"), acls.serve_needs(TOPICS, "grp")
    line = explain(ke.SaslAuthenticationFailedError(f"invalid credentials ({SECRET})"), conn, needs)
    assert line.startswith("authentication failed for user 'svc' with SASL SCRAM-SHA-512 at k:9093")
    assert SECRET not in line and "***" in line
    line = explain(ke.TopicAuthorizationFailedError("predictions"), conn, needs)
    assert line.startswith("not authorized: User:svc may not Write, Describe, DescribeConfigs on topic predictions")
    assert "kafka-acls.sh --bootstrap-server k:9093" in line
    line = explain(ke.TopicAuthorizationFailedError({"ev", "grp-ev-changelog"}), conn, needs)
    assert "Read, Describe on topic ev; Read, Write, Describe, DescribeConfigs on topic grp-ev-changelog" in line
    assert "may not Read on group grp" in explain(ke.GroupAuthorizationFailedError("grp"), conn, needs)
    line = explain(ke.TransactionalIdAuthorizationFailedError(), conn, needs)
    assert "Write, Describe on transactional-id streamer-grp-ev-" in line and "prefixed" in line
    wrapped = DeliveryError("a record was not delivered")
    wrapped.__cause__ = ke.TopicAuthorizationFailedError("events.dlq")
    assert "on topic events.dlq" in explain(wrapped, conn, needs)
    assert "IdempotentWrite" in explain(ke.ClusterAuthorizationFailedError(), conn, needs)


def test_retriable_kafka_python_failures_are_left_to_retry():
    conn = _conn(f"127.0.0.1:{_closed_port()}")
    for exc in (ke.NotLeaderForPartitionError(), ke.RequestTimedOutError(), ke.KafkaTimeoutError("flush"),
                ke.KafkaTimeoutError("Unable to bootstrap"), ke.KafkaConnectionError("refused")):
        assert explain(exc, conn) is None, exc
    assert probe(conn) is None  # nothing listens: down, retry


def test_a_port_that_hangs_up_without_a_word_is_not_judged():
    """Only definite answers are fatal: a server that accepts and closes says nothing about our settings."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    stop = threading.Event()

    def hang_up():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                client, _ = server.accept()
                client.close()
            except OSError:
                pass

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    try:
        port = server.getsockname()[1]
        assert probe(_conn(f"127.0.0.1:{port}"), timeout_s=2) is None
        assert explain(ke.KafkaTimeoutError("Unable to bootstrap"), Connection(f"127.0.0.1:{port}")) is None
    finally:
        stop.set()
        thread.join(2)
        server.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- failures: confluent-kafka


class _FakeConfluentError:
    """What confluent_kafka.KafkaError offers (name(), code(), str()), for a test without librdkafka."""

    def __init__(self, name, text, code=-1):
        self._name, self._text, self._code = name, text, code

    def name(self):
        return self._name

    def code(self):
        return self._code

    def str(self):
        return self._text


def test_confluent_error_codes_are_classified_without_importing_confluent_kafka():
    conn, needs = _conn("k:9093"), acls.serve_needs(TOPICS, "grp", transactional_id="tx-1")
    line = explain(_FakeConfluentError("_AUTHENTICATION", "SASL authentication error: Authentication failed"), conn)
    assert line.startswith("authentication failed for user 'svc' with SASL SCRAM-SHA-512")
    err = _FakeConfluentError("TOPIC_AUTHORIZATION_FAILED", "Broker: Topic authorization failed")
    assert "may not Write, Describe, DescribeConfigs on topic predictions" in explain(err, conn, needs,
                                                                                      topic="predictions")
    err = _FakeConfluentError("GROUP_AUTHORIZATION_FAILED", "Group authorization failed.")
    assert "may not Read on group grp" in explain(err, conn, needs)
    err = _FakeConfluentError("TRANSACTIONAL_ID_AUTHORIZATION_FAILED", "Transactional Id authorization failed")
    assert "may not Write, Describe on transactional-id tx-1" in explain(Exception(err), conn, needs)
    conn = _conn(f"127.0.0.1:{_closed_port()}")
    assert explain(_FakeConfluentError("_TRANSPORT", "Connection refused"), conn) is None  # down: retry
    assert explain(_FakeConfluentError("_MSG_TIMED_OUT", "Local: Message timed out"), conn) is None
    err = _FakeConfluentError("_SSL", "SSL handshake failed: certificate verify failed: broker certificate ...")
    assert explain(err, conn).startswith("TLS failed with the broker")
