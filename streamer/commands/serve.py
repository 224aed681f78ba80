"""`streamer serve`: run the streaming engine in a Kafka consumer group, with durable per-stream state.

Every flag can also be set as an environment variable STREAMER_<FLAG_NAME> (upper case, - as _),
e.g. STREAMER_BOOTSTRAP_SERVERS, STREAMER_EXACTLY_ONCE=1, STREAMER_SASL_PASSWORD.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
import threading

from streamer.commands._options import add_engine_options, add_metrics_options, flag as _flag
from streamer.commands._options import int_at_least as _int_at_least, positive_float as _seconds

PROG = "streamer serve"
DEFAULT_METRICS_PORT = 8000


def register(subparsers) -> None:
    from streamer.cli import env_default
    from streamer.kafka.config import COMPRESSION_TYPES, add_client_option, add_connection_options, add_topic_options

    p = subparsers.add_parser(
        "serve",
        help="serve a model from Kafka: events in, per-step predictions out, state checkpointed",
        description="Consume events (keyed by stream_id) from --input-topic in consumer group --group-id, run "
                    "the streaming engine, produce one prediction record per event to --output-topic (keyed by "
                    "stream_id) and dead letters to --dlq-topic. Per-stream state is checkpointed to a compacted "
                    "changelog topic and restored on assignment, so crashes and rebalances lose nothing. "
                    "At-least-once by default (replayed steps are deduplicated by step); --exactly-once puts "
                    "predictions, changelog and offsets in one Kafka transaction. SIGTERM/SIGINT: finish the "
                    "batch, checkpoint, commit, leave the group, exit 0. Every flag is also an environment "
                    "variable STREAMER_<FLAG> (e.g. STREAMER_BOOTSTRAP_SERVERS).",
    )
    model = env_default("model", None)
    p.add_argument("--model", metavar="PATH", default=model, required=model is None,
                   help="a converted step-model directory (no TensorFlow needed), a `streamer train` directory or "
                        "a .keras or Keras 2 .h5 model file [STREAMER_MODEL]")
    add_connection_options(p)
    add_client_option(p.add_argument_group("Kafka client"))
    add_topic_options(p)

    g = p.add_argument_group("topic creation")
    g.add_argument("--create-topics", action="store_true", default=env_default("create_topics", False, _flag),
                   help="create missing topics at start-up (the changelog compacted, with the input topic's "
                        "partition count), and add partitions to the changelog when the input topic grows "
                        "[STREAMER_CREATE_TOPICS=1]")
    g.add_argument("--partitions", type=_int_at_least(1), metavar="N",
                   default=env_default("partitions", None, _int_at_least(1)),
                   help="partitions of topics created by --create-topics (default: the input topic's, or 1) "
                        "[STREAMER_PARTITIONS]")
    g.add_argument("--replication-factor", type=_int_at_least(-1), metavar="N",
                   default=env_default("replication_factor", -1, _int_at_least(-1)),
                   help="replication factor of created topics (default -1: the broker's default) "
                        "[STREAMER_REPLICATION_FACTOR]")

    _add_delivery_options(p)
    _add_membership_options(p)

    g = p.add_argument_group("consumer and producer tuning")
    g.add_argument("--poll-max-records", type=_int_at_least(1), metavar="N",
                   default=env_default("poll_max_records", 1000, _int_at_least(1)),
                   help="most events per poll (one engine batch); default 1000 [STREAMER_POLL_MAX_RECORDS]")
    g.add_argument("--poll-timeout-ms", type=_int_at_least(1), metavar="MS",
                   default=env_default("poll_timeout_ms", 100, _int_at_least(1)),
                   help="longest wait in one poll (default 100) [STREAMER_POLL_TIMEOUT_MS]")
    g.add_argument("--session-timeout-ms", type=_int_at_least(1), metavar="MS",
                   default=env_default("session_timeout_ms", 45000, _int_at_least(1)),
                   help="group session timeout: how soon a dead instance's partitions move (default 45000; "
                        "the broker allows 6000 and up by default) [STREAMER_SESSION_TIMEOUT_MS]")
    g.add_argument("--heartbeat-interval-ms", type=_int_at_least(1), metavar="MS",
                   default=env_default("heartbeat_interval_ms", 3000, _int_at_least(1)),
                   help="default 3000 [STREAMER_HEARTBEAT_INTERVAL_MS]")
    g.add_argument("--max-poll-interval-ms", type=_int_at_least(1), metavar="MS",
                   default=env_default("max_poll_interval_ms", 300000, _int_at_least(1)),
                   help="longest batch + restore before the group drops this instance (default 300000) "
                        "[STREAMER_MAX_POLL_INTERVAL_MS]")
    g.add_argument("--auto-offset-reset", choices=("earliest", "latest"),
                   default=env_default("auto_offset_reset", "earliest"),
                   help="where a partition without a committed offset starts (default earliest) "
                        "[STREAMER_AUTO_OFFSET_RESET]")
    g.add_argument("--linger-ms", type=_int_at_least(0), metavar="MS",
                   default=env_default("linger_ms", 5, _int_at_least(0)),
                   help="producer batching delay (default 5) [STREAMER_LINGER_MS]")
    g.add_argument("--compression", choices=COMPRESSION_TYPES, default=env_default("compression", "none"),
                   help="producer compression (default none; lz4/zstd/snappy need their Python packages) "
                        "[STREAMER_COMPRESSION]")
    g.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                   default=env_default("log_level", "INFO"), help="default INFO [STREAMER_LOG_LEVEL]")
    g.add_argument("--kafka-log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
                   default=env_default("kafka_log_level", "CRITICAL"),
                   help="the Kafka client's own logging (logger `kafka`; librdkafka's is `kafka.librdkafka`): "
                        "both log every failed reconnect, serve reports what matters itself; default CRITICAL "
                        "[STREAMER_KAFKA_LOG_LEVEL]")
    add_engine_options(p)
    add_metrics_options(p, default_port=DEFAULT_METRICS_PORT)
    p.set_defaults(func=run)


def _add_delivery_options(p) -> None:
    """Delivery (at-least-once or exactly-once), checkpoints and model changes."""
    from streamer.cli import env_default
    from streamer.kafka.restore import MODEL_CHANGE_POLICIES

    g = p.add_argument_group("delivery and state")
    g.add_argument("--exactly-once", action="store_true", default=env_default("exactly_once", False, _flag),
                   help="predictions, dead letters, changelog records and input offsets in one transaction per "
                        "checkpoint; read them with isolation.level=read_committed [STREAMER_EXACTLY_ONCE=1]")
    g.add_argument("--transactional-id", metavar="ID", default=env_default("transactional_id", None),
                   help="--exactly-once: this instance's transactional.id, stable across its restarts and unique "
                        "per instance; default streamer-<group>-<input>-<hostname> [STREAMER_TRANSACTIONAL_ID]")
    g.add_argument("--transaction-timeout-ms", type=_int_at_least(1000), metavar="MS",
                   default=env_default("transaction_timeout_ms", 10000, _int_at_least(1000)),
                   help="--exactly-once: the broker aborts a transaction left open this long by a dead instance "
                        "(default 10000) [STREAMER_TRANSACTION_TIMEOUT_MS]")
    g.add_argument("--checkpoint-interval", type=_seconds, metavar="SECONDS",
                   default=env_default("checkpoint_interval", None, _seconds),
                   help="seconds between checkpoints: changelog + offsets (at most this much input is replayed "
                        "after a crash), or one transaction commit under --exactly-once (then also how long "
                        "predictions wait to become visible to read_committed readers); default 5, or 1 with "
                        "--exactly-once [STREAMER_CHECKPOINT_INTERVAL]")
    g.add_argument("--checkpoint-timeout", type=_seconds, metavar="SECONDS",
                   default=env_default("checkpoint_timeout", 30.0, _seconds),
                   help="how long a produced record may wait for the broker (delivery.timeout.ms): shorter "
                        "broker outages are waited out; after a longer one the checkpoint fails and serve rewinds "
                        "to the previous one and replays (default 30) [STREAMER_CHECKPOINT_TIMEOUT]")
    g.add_argument("--on-model-change", choices=MODEL_CHANGE_POLICIES,
                   default=env_default("on_model_change", "reset"),
                   help="checkpointed state made by another model version: reset (default: start those streams "
                        "from the initial state, keep their step counters) or refuse (exit 2) "
                        "[STREAMER_ON_MODEL_CHANGE]")


def _add_membership_options(p) -> None:
    """Static membership (streamer.kafka.membership), keys and partitions (streamer.kafka.routing, topology)."""
    from streamer.cli import env_default
    from streamer.config import KEY_MISMATCH_POLICIES

    g = p.add_argument_group("group membership and routing")
    g.add_argument("--instance-id", metavar="ID", default=env_default("instance_id", None),
                   help="static group membership (group.instance.id): stable across this instance's restarts and "
                        "unique per instance, so a restarted instance gets its partitions back at once instead of "
                        "after --session-timeout-ms; default streamer-<group>-<input>-<hostname> "
                        "[STREAMER_INSTANCE_ID]")
    g.add_argument("--dynamic-membership", action="store_true",
                   default=env_default("dynamic_membership", False, _flag),
                   help="join as a dynamic member (no --instance-id): for hosts without a stable name; a dead "
                        "instance's partitions then wait for the session timeout [STREAMER_DYNAMIC_MEMBERSHIP=1]")
    g.add_argument("--stay-in-group", action="store_true", default=env_default("stay_in_group", False, _flag),
                   help="on SIGTERM keep this static member's partitions until --session-timeout-ms instead of "
                        "leaving the group: a restart within that time gets them back without any rebalance "
                        "(rolling restarts); a scale-down leaves them unserved until then [STREAMER_STAY_IN_GROUP=1]")
    g.add_argument("--on-key-mismatch", choices=KEY_MISMATCH_POLICIES,
                   default=env_default("on_key_mismatch", "accept"),
                   help="a message whose key is missing or is not its stream_id: accept (default: serve it; "
                        "counted in streamer_key_mismatch_total and logged) or reject (dead letter key_mismatch) "
                        "[STREAMER_ON_KEY_MISMATCH]")
    g.add_argument("--metadata-max-age-ms", type=_int_at_least(100), metavar="MS",
                   default=env_default("metadata_max_age_ms", 5000, _int_at_least(100)),
                   help="refresh the input topic's metadata this often, so that added partitions are noticed "
                        "(default 5000) [STREAMER_METADATA_MAX_AGE_MS]")


def run(args) -> int:
    from prometheus_client import CollectorRegistry

    from models.serving import load_step_model
    from streamer.commands._options import engine_config, start_metrics_server
    from streamer import gc_tuning
    from streamer.engine import Engine
    from streamer.errors import UserError
    from streamer.kafka import acls, failures, secrets
    from streamer.kafka import limits as topic_limits
    from streamer.kafka.client import Fenced, make_clients
    from streamer.kafka.config import connection_from_args, topics_from_args
    from streamer.kafka.membership import fenced_message
    from streamer.kafka.metrics import KafkaMetrics
    from streamer.kafka.service import FATAL_ERRORS, KafkaService, ServeSettings
    from streamer.metrics import Metrics

    _setup_logging(args.log_level, args.kafka_log_level)
    # kafka-python: four threads share the GIL (this loop, kafka-python's consumer IO loop and producer
    # sender, the changelog sender): hand it over every 1 ms instead of 5 ms. Measured: p99 latency at 2k
    # events/s 105 -> 64-80 ms, throughput unchanged (benchmarks/bench_kafka.py). librdkafka's threads
    # hold no GIL.
    if args.kafka_client == "kafka-python":
        sys.setswitchinterval(0.001)
    log = logging.getLogger("streamer.serve")
    conn = connection_from_args(args)
    # every log record, the clients' own too (kafka-python logs its config at DEBUG, librdkafka its debug contexts)
    secrets.mask_in_logs([conn.sasl_password, conn.ssl_key_password])
    topics = topics_from_args(args)
    tuning = _tuning(args, topics)
    needs = acls.serve_needs(topics, args.group_id, exactly_once=args.exactly_once,
                             transactional_id=args.transactional_id, create_topics=args.create_topics)
    settings = ServeSettings(
        topics=topics, exactly_once=args.exactly_once,
        checkpoint_interval_s=args.checkpoint_interval or (1.0 if args.exactly_once else 5.0),
        poll_timeout_ms=args.poll_timeout_ms,
        max_poll_records=args.poll_max_records, on_model_change=args.on_model_change,
        create_topics=args.create_topics, leave_on_shutdown=not args.stay_in_group)

    model = load_step_model(args.model)
    metrics = Metrics(CollectorRegistry())
    kafka_metrics = KafkaMetrics(metrics.registry)
    server = None
    if args.metrics_port is not None:
        server = start_metrics_server(metrics.registry, args.metrics_host, args.metrics_port, PROG)
    stop = threading.Event()
    _install_signal_handlers(stop)
    instance_id = tuning.group_instance_id
    log.info("model %s (%d features -> %d outputs, state %d floats); topics %s -> %s, dead letters %s, "
             "changelog %s; group %s as %s; client %s", model.version, model.feature_size, model.output_size,
             model.state_size, topics.input, topics.output, topics.dlq, topics.changelog, args.group_id,
             f"static member {instance_id}" if instance_id else "a dynamic member", args.kafka_client)
    clients = make_clients(args.kafka_client, conn, tuning, topics.input, kafka_metrics, needs)
    try:
        checked = _check_topics(clients, args, topics, stop, kafka_metrics)
        if checked is None:
            return 0
        counts, found = checked
        topic_limits.check(found, topics, model)
        clients.tuning = dataclasses.replace(tuning, batch_bytes=topic_limits.batch_bytes(found, tuning.batch_bytes))
        settings = dataclasses.replace(settings, co_partitioned=counts[topics.output] == counts[topics.input],
                                       changelog_partitions=counts[topics.changelog],
                                       output_partitions=counts[topics.output])
        config = dataclasses.replace(engine_config(args), on_key_mismatch=args.on_key_mismatch,
                                     max_output_record_bytes=found.output, max_dead_letter_record_bytes=found.dlq)
        engine = Engine(model, config, metrics)
        service = KafkaService(engine, settings, clients, kafka_metrics,
                               ready=server.ready if server is not None else None)
        gc_tuning.for_serving()
        service.run(stop)
    except FATAL_ERRORS as exc:
        if isinstance(exc, UserError):
            raise
        if isinstance(exc, Fenced):
            raise UserError(fenced_message(args.group_id, instance_id)) from None
        raise UserError(failures.explain(exc, conn, needs, probe=False)
                        or f"Kafka refused: {exc}; check the security settings, ACLs and broker version") from None
    finally:
        if server is not None:
            server.close()
    return 0


def _tuning(args, topics):
    """The clients' settings from the flags (static membership unless --dynamic-membership)."""
    from streamer.errors import UserError
    from streamer.kafka.config import ClientTuning, default_transactional_id
    from streamer.kafka.membership import default_instance_id

    if args.transactional_id is not None and not args.exactly_once:
        raise UserError("--transactional-id only applies with --exactly-once")
    if args.instance_id is not None and args.dynamic_membership:
        raise UserError("--instance-id and --dynamic-membership exclude each other: give one")
    instance_id = None if args.dynamic_membership else args.instance_id or default_instance_id(args.group_id,
                                                                                              topics.input)
    return ClientTuning(
        group_id=args.group_id, max_poll_records=args.poll_max_records, session_timeout_ms=args.session_timeout_ms,
        heartbeat_interval_ms=args.heartbeat_interval_ms, max_poll_interval_ms=args.max_poll_interval_ms,
        auto_offset_reset=args.auto_offset_reset, linger_ms=args.linger_ms, compression=args.compression,
        exactly_once=args.exactly_once, delivery_timeout_ms=int(args.checkpoint_timeout * 1000),
        transactional_id=args.transactional_id or default_transactional_id(args.group_id, topics.input),
        transaction_timeout_ms=args.transaction_timeout_ms, group_instance_id=instance_id,
        metadata_max_age_ms=args.metadata_max_age_ms, client_debug=args.kafka_log_level == "DEBUG")


def _check_topics(clients, args, topics, stop, kafka_metrics):
    """(partition counts, `TopicLimits`) once the topics exist (created with --create-topics), the principal
    has the ACLs serve needs on them and their limits are read; None when stopped first."""
    from streamer.kafka import acls, limits as topic_limits, topics as topic_admin
    from streamer.kafka.service import retrying

    log = logging.getLogger("streamer.serve")
    admin = retrying(clients.admin, stop, kafka_metrics, "connecting to Kafka", explain=clients.explain)
    if admin is None:
        return None

    def check():
        counts = topic_admin.ensure(admin, topics, create=args.create_topics, partitions=args.partitions,
                                    replication_factor=args.replication_factor)
        acls.check_topic_access(admin, clients.needs, clients.connection)  # a missing ACL named now, not later
        return counts

    try:
        counts = retrying(check, stop, kafka_metrics, "checking the topics", explain=clients.explain)
        found = None if counts is None else retrying(
            lambda: topic_limits.read(admin, topics, clients.tuning.max_request_size), stop, kafka_metrics,
            "reading the topics' limits", explain=clients.explain)
    finally:
        admin.close()
    if counts is None or found is None:
        return None
    log.info("topics ok: %s; largest records: %s", ", ".join(f"{name} ({n} partitions)" for name, n in counts.items()),
             found.describe())
    return counts, found


def _install_signal_handlers(stop: threading.Event) -> None:
    import faulthandler

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID`: every thread's stack on stderr

    def handle(signum, frame):
        if stop.is_set():  # a second signal: stop now
            raise KeyboardInterrupt
        logging.getLogger("streamer.serve").info("%s: finishing the batch, checkpointing, leaving the group",
                                                 signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def _setup_logging(level: str, kafka_level: str) -> None:
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, level),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(getattr(logging, kafka_level))
