"""`streamer produce`: a load generator for the Q&A task, to a Kafka topic or to a JSONL file.

Generates --streams concurrent streams of per-step feature events (uniform [0,1)^5, lengths drawn from
--min-len..--max-len), interleaved at random across streams and in order within each stream, each
keyed by its stream_id and carrying `step` and `ts` (epoch ms). See `streamer.loadgen`.

Keys are hashed with murmur2 (kafka-python's default partitioner, the Java client's too), the partitioner
every producer of serve's input topic must use (`streamer.routing`).
"""

from __future__ import annotations

import signal
import sys

PROG = "streamer produce"


from streamer.commands._options import BadValue, flag as _flag, int_at_least as _count


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BadValue(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise BadValue(f"expected a finite number >= 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise BadValue("expected a number > 0, got 0")
    return value


def register(subparsers) -> None:
    from streamer.cli import env_default
    from streamer.loadgen import DEFAULT_MAX_LEN, DEFAULT_MIN_LEN

    p = subparsers.add_parser(
        "produce",
        help="generate the Q&A task's event streams into Kafka (or a JSONL file): a load generator",
        description="Generate --streams concurrent event streams of the Q&A task (5 features uniform in "
                    "[0,1), lengths from --min-len to --max-len) and send them to the --topic, keyed by "
                    "stream_id, interleaved at random across streams and in order within each stream. "
                    "Each event has stream_id, step, features and ts (epoch ms); with --chunk K it carries "
                    "K steps; with --end a stream's last event has end=true. Without --continuous every "
                    "stream runs once to its end; with it, a finished stream is replaced by a new one so "
                    "that --streams stay open until --duration/--events or SIGTERM. A summary goes to "
                    "stderr.",
    )
    from streamer.kafka.config import add_connection_options

    add_connection_options(p, required=False)  # file mode (--output) needs no broker
    dest = p.add_argument_group("destination (one of --bootstrap-servers and --output)")
    dest.add_argument("--output", metavar="FILE",
                      help="write the events as JSONL to FILE (- for stdout) instead of Kafka")
    p.add_argument("--topic", default=env_default("input_topic", "events"), metavar="TOPIC",
                   help="topic to send to (default events; it must exist) [STREAMER_INPUT_TOPIC]")
    g = p.add_argument_group("load")
    g.add_argument("--streams", type=_count(1), default=env_default("streams", 100, _count(1)), metavar="N",
                   help="streams open at once (default 100) [STREAMER_STREAMS]")
    g.add_argument("--rate", type=_non_negative_float, metavar="EVENTS_PER_S",
                   default=env_default("rate", 0.0, _non_negative_float),
                   help="at most this many events (messages) per second, token bucket; 0: as fast as "
                        "possible (default) [STREAMER_RATE]")
    g.add_argument("--chunk", type=_count(0), default=env_default("chunk", 0, _count(0)), metavar="K",
                   help="steps per event: K > 0 sends chunks of K steps (features as a list of lists; a "
                        "stream's last chunk may be shorter); 0: one step per event (default) [STREAMER_CHUNK]")
    g.add_argument("--continuous", action="store_true", default=env_default("continuous", False, _flag),
                   help="replace every finished stream by a new one (runs until --duration, --events or "
                        "SIGTERM) [STREAMER_CONTINUOUS=1]")
    g.add_argument("--duration", type=_positive_float, metavar="SECONDS",
                   default=env_default("duration", None, _positive_float),
                   help="stop after this many seconds [STREAMER_DURATION]")
    g.add_argument("--events", type=_count(1), metavar="N", default=env_default("events", None, _count(1)),
                   help="stop after this many events [STREAMER_EVENTS]")
    g.add_argument("--min-len", type=_count(1), default=env_default("min_len", DEFAULT_MIN_LEN, _count(1)),
                   metavar="T", help=f"shortest stream, steps (default {DEFAULT_MIN_LEN}) [STREAMER_MIN_LEN]")
    g.add_argument("--max-len", type=_count(1), default=env_default("max_len", DEFAULT_MAX_LEN, _count(1)),
                   metavar="T", help=f"longest stream, steps (default {DEFAULT_MAX_LEN}) [STREAMER_MAX_LEN]")
    g.add_argument("--end", action="store_true", default=env_default("end", False, _flag),
                   help="mark each stream's last event with end=true (the server frees its state) "
                        "[STREAMER_END=1]")
    g.add_argument("--seed", type=int, default=env_default("seed", None, int),
                   help="random seed: the same seed gives the same events (default: random) [STREAMER_SEED]")
    g.add_argument("--stream-prefix", metavar="TEXT", default=env_default("stream_prefix", None),
                   help="stream ids are TEXT0, TEXT1, ...; default s<seed>- with --seed, else a random "
                        "g<hex>- so that a restarted generator never continues old streams "
                        "[STREAMER_STREAM_PREFIX]")
    p.add_argument("--progress", type=_non_negative_float, metavar="SECONDS",
                   default=env_default("progress", 0.0, _non_negative_float),
                   help="print a progress line to stderr every SECONDS (default 0: none) [STREAMER_PROGRESS]")
    p.add_argument("--connect-timeout", type=_positive_float, metavar="SECONDS",
                   default=env_default("connect_timeout", 15.0, _positive_float),
                   help="how long to wait for the broker and the topic's metadata (default 15) "
                        "[STREAMER_CONNECT_TIMEOUT]")
    p.add_argument("--quiet", action="store_true", help="no summary on stderr")
    p.set_defaults(func=run)


def _client_kwargs(args) -> dict:
    """kafka-python connection keyword arguments (servers, client id, TLS/SASL) from the flags."""
    from streamer.kafka.config import connection_from_args

    kwargs = connection_from_args(args).client_kwargs()
    kwargs["client_id"] = "streamer-produce"
    return kwargs


def run(args) -> int:
    import os

    from streamer.errors import UserError
    from streamer.loadgen import EventGenerator, run_load

    if (args.output is None) == (args.bootstrap_servers is None):
        raise UserError("give either --bootstrap-servers (send to Kafka) or --output FILE (write JSONL), "
                        "not both and not neither")
    if args.min_len > args.max_len:
        raise UserError(f"--min-len ({args.min_len}) is above --max-len ({args.max_len}); "
                        "give min-len <= max-len")
    prefix = args.stream_prefix
    if prefix is None:
        prefix = f"s{args.seed}-" if args.seed is not None else f"g{os.urandom(3).hex()}-"
    generator = EventGenerator(args.streams, min_len=args.min_len, max_len=args.max_len, chunk=args.chunk,
                               total_streams=None if args.continuous else args.streams, seed=args.seed,
                               prefix=prefix)
    stop = _StopFlag()
    with _Sink(args) as sink:
        sink.on_fatal = stop.set
        previous = {sig: signal.signal(sig, stop.set) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            summary = run_load(generator, sink.send, rate=args.rate, duration=args.duration,
                               max_events=args.events, mark_end=args.end, should_stop=stop.is_set,
                               progress=_progress_printer(sink.target) if args.progress else None,
                               progress_every=args.progress)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        sink.flush()
    if sink.fatal:
        raise UserError(f"{sink.fatal} ({sink.failed} of {summary.events} events not delivered)")
    if sink.failed:
        print(f"{PROG}: {sink.failed} of {summary.events} events were not delivered: {sink.first_error}",
              file=sys.stderr)
    if not args.quiet:
        print(summary.line(PROG, sink.target), file=sys.stderr)
    return 1 if sink.failed else 0


class _StopFlag:
    def __init__(self):
        self._set = False

    def set(self, *_signal_args) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


def _progress_printer(target: str):
    def report(summary) -> None:
        print(f"{PROG}: {summary.events} events, {summary.streams_started} streams so far to {target} "
              f"({summary.rate:,.0f} events/s)", file=sys.stderr, flush=True)
    return report


class _Sink:
    """Where the events go: a Kafka producer or a JSONL file; counts failed deliveries."""

    def __init__(self, args):
        self.args = args
        self.failed = 0
        self.first_error = None
        self.fatal = None  # the line of a failure that retrying cannot fix
        self.on_fatal = None
        self._producer = None
        self._file = None
        self._close_file = False
        self.send = None
        self.target = ""

    def __enter__(self) -> "_Sink":
        if self.args.output is not None:
            self._open_file()
        else:
            self._open_producer()
        return self

    def _open_file(self) -> None:
        from streamer.errors import UserError

        path = self.args.output
        if path == "-":
            self._file, close = sys.stdout.buffer, False
        else:
            try:
                self._file, close = open(path, "wb"), True
            except OSError as exc:
                raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
        self._close_file = close
        write = self._file.write
        self.send = lambda key, value: write(value + b"\n")
        self.target = "stdout" if path == "-" else f"file {path}"

    def _open_producer(self) -> None:
        _quiet_kafka_logging()
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        from streamer.errors import UserError

        servers = self.args.bootstrap_servers
        topic = self.args.topic
        timeout_ms = int(self.args.connect_timeout * 1000)
        try:
            kwargs = {**_client_kwargs(self.args), "bootstrap_timeout_ms": timeout_ms}
            self._producer = KafkaProducer(acks="all", linger_ms=5, allow_auto_create_topics=False,
                                           max_block_ms=timeout_ms, **kwargs)
        except KafkaError as exc:
            raise UserError(self._explain(exc)
                            or f"no Kafka broker answers at {servers} within {self.args.connect_timeout:g} s "
                               f"({exc}); check --bootstrap-servers and that the broker is up") from None
        try:
            partitions = self._producer.partitions_for(topic)
        except KafkaError as exc:
            partitions, line = None, self._explain(exc, probe=False)
            if line:
                self._producer.close(timeout=5)
                self._producer = None
                raise UserError(line) from None
        if not partitions:
            self._producer.close(timeout=5)
            self._producer = None
            raise UserError(f"topic {topic!r} does not exist on {servers} (topics are not created "
                            "automatically); create it with `streamer topics create` or choose --topic")
        producer = self._producer

        def send(key: bytes, value: bytes) -> None:
            try:
                producer.send(topic, key=key, value=value).add_errback(self._failed)
            except KafkaError as exc:  # e.g. the send buffer stayed full for --connect-timeout
                self._failed(exc)

        self.send = send
        self.target = f"kafka topic {topic} ({len(partitions)} partitions) at {servers}"

    def _explain(self, exc, probe: bool = True) -> str | None:
        """A line for a failure that retrying cannot fix (authentication, ACLs, TLS), else None."""
        from streamer.kafka import acls, failures
        from streamer.kafka.config import connection_from_args

        return failures.explain(exc, connection_from_args(self.args), acls.producer_needs(self.args.topic),
                                probe=probe)

    def _failed(self, exc) -> None:
        self.failed += 1
        if self.first_error is None:
            self.first_error = f"{type(exc).__name__}: {exc}"
            self.fatal = self._explain(exc, probe=False)
            if self.fatal and self.on_fatal is not None:
                self.on_fatal()  # e.g. no Write ACL: every further event would fail the same way

    def flush(self) -> None:
        if self._producer is not None:
            from kafka.errors import KafkaError

            try:
                self._producer.flush(timeout=60)
            except KafkaError as exc:  # undelivered records also fail their futures (counted above)
                self._failed(exc)
        elif self._file is not None:
            self._file.flush()

    def __exit__(self, *exc) -> None:
        if self._producer is not None:
            self._producer.close(timeout=10)
        if self._file is not None and self._close_file:
            self._file.close()


def _quiet_kafka_logging() -> None:
    """kafka-python logs connection retries at WARNING/ERROR: keep stderr to our own lines."""
    import logging

    logging.getLogger("kafka").setLevel(logging.CRITICAL)


