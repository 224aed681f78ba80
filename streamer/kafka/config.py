"""Kafka client settings from flags and STREAMER_* environment variables, for either client.

`add_connection_options(parser)` adds the connection and security flags shared by `serve` and `topics`
(and any other command that talks to the broker); `connection_from_args(args)` checks them and returns
a `Connection`, whose `client_kwargs()` are the kafka-python keyword arguments every client gets and
whose `librdkafka_config()` are the same settings for confluent-kafka (librdkafka property names).
`add_client_option(parser)` adds ``--kafka-client kafka-python|confluent`` [STREAMER_KAFKA_CLIENT].
`ClientTuning` holds the serve loop's consumer/producer knobs; `streamer.kafka.kafka_python` and
`streamer.kafka.confluent` turn them into each client's settings.

Secrets (the SASL password, the TLS key password) come from the environment (STREAMER_SASL_PASSWORD,
STREAMER_SSL_KEY_PASSWORD) or a file (--sasl-password-file, --ssl-key-password-file), never from a flag
(see streamer.kafka.secrets); they are never part of a repr or a log line.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from streamer.errors import UserError

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
COMPRESSION_TYPES = ("none", "gzip", "snappy", "lz4", "zstd")


@dataclass(frozen=True)
class Connection:
    """Where the brokers are and how to authenticate to them."""

    bootstrap_servers: str
    security_protocol: str = "PLAINTEXT"
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_key_password: str | None = field(default=None, repr=False)
    ssl_check_hostname: bool = True
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    client_id: str = field(default_factory=lambda: f"streamer-{socket.gethostname()}")

    def validate(self) -> "Connection":
        """Raise UserError (one line: what, expected, how to fix) for an unusable combination."""
        servers = [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()]
        if not servers:
            raise UserError("--bootstrap-servers is empty; expected HOST:PORT[,HOST:PORT...] "
                            "(or set STREAMER_BOOTSTRAP_SERVERS)")
        for s in servers:
            host, sep, port = s.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise UserError(f"--bootstrap-servers entry {s!r} is not HOST:PORT; "
                                "expected e.g. 127.0.0.1:9092 or kafka-1:9092,kafka-2:9092")
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise UserError(f"--security-protocol {self.security_protocol!r} is unknown; expected one of "
                            f"{', '.join(SECURITY_PROTOCOLS)}")
        sasl = self.security_protocol.startswith("SASL_")
        tls = self.security_protocol.endswith("SSL")
        if sasl:
            if self.sasl_mechanism not in SASL_MECHANISMS:
                raise UserError(f"--security-protocol {self.security_protocol} needs --sasl-mechanism, one of "
                                f"{', '.join(SASL_MECHANISMS)} (got {self.sasl_mechanism!r})")
            if not self.sasl_username or self.sasl_password is None:
                raise UserError(f"SASL {self.sasl_mechanism} needs --sasl-username and a password "
                                "(STREAMER_SASL_PASSWORD, or --sasl-password-file)")
        elif self.sasl_mechanism or self.sasl_username or self.sasl_password:
            raise UserError(f"SASL settings were given but --security-protocol is {self.security_protocol}; "
                            "use SASL_SSL (or SASL_PLAINTEXT on a trusted network)")
        tls_files = {"--ssl-cafile": self.ssl_cafile, "--ssl-certfile": self.ssl_certfile,
                     "--ssl-keyfile": self.ssl_keyfile}
        if not tls and any(tls_files.values()):
            raise UserError(f"TLS files were given but --security-protocol is {self.security_protocol}; "
                            "use SSL or SASL_SSL")
        for flag, path in tls_files.items():
            if path is not None and not os.access(path, os.R_OK):
                raise UserError(f"{flag} {path}: no such readable file")
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise UserError("a TLS client certificate needs both --ssl-certfile and --ssl-keyfile")
        return self

    def client_kwargs(self) -> dict:
        """The kafka-python keyword arguments shared by consumers, producers and the admin client."""
        kw: dict = {"bootstrap_servers": [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()],
                    "client_id": self.client_id, "security_protocol": self.security_protocol,
                    "reconnect_backoff_max_ms": 2000,  # back within 2 s of a broker's return
                    "bootstrap_timeout_ms": 5000}  # then serve counts the failure and retries
        if self.security_protocol.endswith("SSL"):
            kw.update(ssl_cafile=self.ssl_cafile, ssl_certfile=self.ssl_certfile, ssl_keyfile=self.ssl_keyfile,
                      ssl_password=self.ssl_key_password, ssl_check_hostname=self.ssl_check_hostname)
        if self.security_protocol.startswith("SASL_"):
            kw.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.sasl_username,
                      sasl_plain_password=self.sasl_password)
        return kw

    def librdkafka_config(self) -> dict:
        """The same settings as librdkafka properties (confluent-kafka), shared by all its clients."""
        servers = ",".join(s.strip() for s in self.bootstrap_servers.split(",") if s.strip())
        c: dict = {"bootstrap.servers": servers, "client.id": self.client_id,
                   "security.protocol": self.security_protocol.lower(),
                   "reconnect.backoff.max.ms": 2000}  # back within 2 s of a broker's return
        if self.security_protocol.endswith("SSL"):
            # without a CA file: the system's CA bundle (librdkafka probes the usual paths)
            c["ssl.ca.location"] = self.ssl_cafile or "probe"
            c["ssl.endpoint.identification.algorithm"] = "https" if self.ssl_check_hostname else "none"
            if self.ssl_certfile:
                c["ssl.certificate.location"] = self.ssl_certfile
                c["ssl.key.location"] = self.ssl_keyfile
            if self.ssl_key_password is not None:
                c["ssl.key.password"] = self.ssl_key_password
        if self.security_protocol.startswith("SASL_"):
            c.update({"sasl.mechanism": self.sasl_mechanism, "sasl.username": self.sasl_username,
                      "sasl.password": self.sasl_password})
        return c


@dataclass(frozen=True)
class ClientTuning:
    """Consumer/producer knobs of the serve loop (see `streamer serve --help`), whichever client; each client
    module maps them to its own settings (`kafka_python.consumer_kwargs`, `confluent.consumer_config`...)."""

    group_id: str = "streamer"
    max_poll_records: int = 1000
    session_timeout_ms: int = 45000
    heartbeat_interval_ms: int = 3000
    max_poll_interval_ms: int = 300000
    auto_offset_reset: str = "earliest"
    linger_ms: int = 5
    batch_bytes: int = 256 * 1024
    compression: str = "none"
    exactly_once: bool = False
    transactional_id: str | None = None
    transaction_timeout_ms: int = 10000
    request_timeout_ms: int = 30000
    delivery_timeout_ms: int = 30000  # a produced record is acknowledged or failed within this
    group_instance_id: str | None = None  # static membership (group.instance.id; streamer.kafka.membership)
    statistics_interval_ms: int = 1000  # librdkafka: lag and broker states every second
    metadata_max_age_ms: int = 5000  # how soon partitions added to the input topic are seen
    max_request_size: int = 8 << 20  # the producer's largest record (streamer.kafka.limits)
    client_debug: bool = False  # --kafka-log-level DEBUG: librdkafka's debug contexts too (kafka-python: its logger)


def default_transactional_id(group_id: str, input_topic: str) -> str:
    """Stable per instance when the host name is (a StatefulSet pod, a fixed container name)."""
    return f"streamer-{group_id}-{input_topic}-{socket.gethostname()}"


# --------------------------------------------------------------------------- flags


def add_connection_options(p, required: bool = True) -> None:
    """--bootstrap-servers and the TLS/SASL flags (each also settable as STREAMER_<NAME>).

    `required=False` leaves --bootstrap-servers optional (a command that can also write to a file)."""
    from streamer.cli import env_default
    from streamer.kafka.secrets import RefuseSecretFlag

    g = p.add_argument_group("Kafka connection and security")
    servers = env_default("bootstrap_servers", None)
    g.add_argument("--bootstrap-servers", metavar="HOST:PORT[,...]", default=servers,
                   required=required and servers is None,
                   help="Kafka brokers to bootstrap from [STREAMER_BOOTSTRAP_SERVERS]")
    g.add_argument("--security-protocol", choices=SECURITY_PROTOCOLS,
                   default=env_default("security_protocol", "PLAINTEXT"),
                   help="PLAINTEXT (default), SSL, SASL_PLAINTEXT or SASL_SSL [STREAMER_SECURITY_PROTOCOL]")
    g.add_argument("--ssl-cafile", metavar="PEM", default=env_default("ssl_cafile", None),
                   help="CA bundle to verify the brokers' certificates (default: the system's) [STREAMER_SSL_CAFILE]")
    g.add_argument("--ssl-certfile", metavar="PEM", default=env_default("ssl_certfile", None),
                   help="client certificate for mutual TLS [STREAMER_SSL_CERTFILE]")
    g.add_argument("--ssl-keyfile", metavar="PEM", default=env_default("ssl_keyfile", None),
                   help="client private key for mutual TLS [STREAMER_SSL_KEYFILE]")
    g.add_argument("--ssl-key-password-file", metavar="FILE", default=env_default("ssl_key_password_file", None),
                   help="file holding the password of --ssl-keyfile; or set STREAMER_SSL_KEY_PASSWORD "
                        "[STREAMER_SSL_KEY_PASSWORD_FILE]")
    g.add_argument("--ssl-key-password", action=RefuseSecretFlag, env_name="STREAMER_SSL_KEY_PASSWORD",
                   file_flag="--ssl-key-password-file")
    g.add_argument("--ssl-no-check-hostname", action="store_true",
                   default=env_default("ssl_no_check_hostname", False, _flag),
                   help="do not check that the broker certificate names the host (testing only) "
                        "[STREAMER_SSL_NO_CHECK_HOSTNAME=1]")
    g.add_argument("--sasl-mechanism", choices=SASL_MECHANISMS, default=env_default("sasl_mechanism", None),
                   help="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 [STREAMER_SASL_MECHANISM]")
    g.add_argument("--sasl-username", metavar="USER", default=env_default("sasl_username", None),
                   help="SASL user name [STREAMER_SASL_USERNAME]")
    g.add_argument("--sasl-password-file", metavar="FILE", default=env_default("sasl_password_file", None),
                   help="file holding the SASL password (a mounted secret); or set STREAMER_SASL_PASSWORD. Never "
                        "a flag: command lines are visible to every user (ps) [STREAMER_SASL_PASSWORD_FILE]")
    g.add_argument("--sasl-password", action=RefuseSecretFlag, env_name="STREAMER_SASL_PASSWORD",
                   file_flag="--sasl-password-file")


def connection_from_args(args) -> Connection:
    from streamer.kafka.secrets import secret_from

    return Connection(
        bootstrap_servers=args.bootstrap_servers or "",
        security_protocol=args.security_protocol,
        ssl_cafile=args.ssl_cafile,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
        ssl_key_password=secret_from(args.ssl_key_password_file, "--ssl-key-password-file",
                                     "STREAMER_SSL_KEY_PASSWORD"),
        ssl_check_hostname=not args.ssl_no_check_hostname,
        sasl_mechanism=args.sasl_mechanism,
        sasl_username=args.sasl_username,
        sasl_password=secret_from(args.sasl_password_file, "--sasl-password-file", "STREAMER_SASL_PASSWORD"),
    ).validate()


def _flag(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected 1/0, true/false, yes/no or on/off, got {text!r}")


def add_client_option(p) -> None:
    """--kafka-client kafka-python|confluent [STREAMER_KAFKA_CLIENT]."""
    from streamer.cli import env_default
    from streamer.kafka.client import CLIENT_NAMES, DEFAULT_CLIENT

    def name(text: str) -> str:  # argparse checks `choices` for flags, not for defaults from the environment
        if text not in CLIENT_NAMES:
            raise ValueError(f"expected one of {', '.join(CLIENT_NAMES)}, got {text!r}")
        return text

    p.add_argument("--kafka-client", choices=CLIENT_NAMES, default=env_default("kafka_client", DEFAULT_CLIENT, name),
                   help="Kafka client library: kafka-python (default; pure Python) or confluent (confluent-kafka on "
                        "librdkafka, several times faster; pip install 'rnn-streamer[confluent]') "
                        "[STREAMER_KAFKA_CLIENT]")


def add_topic_options(p) -> None:
    """--group-id and the four topic names (each also settable as STREAMER_<NAME>)."""
    from streamer.cli import env_default

    g = p.add_argument_group("topics and group")
    g.add_argument("--input-topic", metavar="TOPIC", default=env_default("input_topic", "events"),
                   help="events, keyed by stream_id (default events) [STREAMER_INPUT_TOPIC]")
    g.add_argument("--output-topic", metavar="TOPIC", default=env_default("output_topic", "predictions"),
                   help="predictions, keyed by stream_id (default predictions) [STREAMER_OUTPUT_TOPIC]")
    g.add_argument("--dlq-topic", metavar="TOPIC", default=env_default("dlq_topic", "events.dlq"),
                   help="dead letters with their source partition/offset (default events.dlq) [STREAMER_DLQ_TOPIC]")
    g.add_argument("--group-id", metavar="GROUP", default=env_default("group_id", "streamer"),
                   help="consumer group (default streamer) [STREAMER_GROUP_ID]")
    g.add_argument("--changelog-topic", metavar="TOPIC", default=env_default("changelog_topic", None),
                   help="compacted per-stream state; default <group-id>-<input-topic>-changelog "
                        "[STREAMER_CHANGELOG_TOPIC]")


def topics_from_args(args):
    from streamer.kafka.topics import Topics

    return Topics.named(args.group_id, args.input_topic, args.output_topic, args.dlq_topic, args.changelog_topic)
