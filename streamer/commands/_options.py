"""Flags shared by the commands that run the engine (replay, demo, and the Kafka serve command).

`add_engine_options(parser)` adds them (defaults from STREAMER_* environment variables);
`engine_config(args)` turns them into an `EngineConfig`; `start_metrics_server(...)` serves /metrics.
"""

from __future__ import annotations

import argparse
import sys

from streamer.errors import UserError


class BadValue(argparse.ArgumentTypeError, ValueError):
    """A flag value error that argparse prints verbatim and env_default() also understands."""


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise BadValue(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise BadValue(f"expected a number >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BadValue(f"expected a number of seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise BadValue(f"expected a finite number of seconds > 0, got {text}")
    return value


def int_at_least(low: int):
    """A flag type: a whole number >= low."""
    def cast(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise BadValue(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise BadValue(f"expected a number >= {low}, got {value}")
        return value
    return cast


def flag(text: str) -> bool:
    """A boolean from an environment variable: 1/0, true/false, yes/no, on/off (empty = false)."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise BadValue(f"expected 1/0, true/false, yes/no or on/off, got {text!r}")


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise BadValue(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise BadValue(f"expected a port from 0 to 65535 (0: any free port), got {value}")
    return value


def add_engine_options(p) -> None:
    from streamer.cli import env_default
    from streamer.config import DEFAULT_GAP_POLICY, DEFAULT_MAX_MESSAGE_BYTES, GAP_POLICIES

    g = p.add_argument_group("engine")
    g.add_argument("--on-gap", choices=GAP_POLICIES, default=env_default("on_gap", DEFAULT_GAP_POLICY),
                   help="what to do with a step that skips ahead of the stream's next step: apply it on the "
                        "current state (default; counted in streamer_step_gaps_total), reject it (dead letter "
                        "step_gap), or reset (start the stream over at that step) [STREAMER_ON_GAP]")
    g.add_argument("--max-streams", type=positive_int, metavar="N",
                   default=env_default("max_streams", None, positive_int),
                   help="cap on streams held in memory; at the cap the least recently used stream is evicted "
                        "(streamer_streams_freed_total{reason=\"evicted\"}); default: no cap [STREAMER_MAX_STREAMS]")
    g.add_argument("--ttl", type=positive_float, metavar="SECONDS", default=env_default("ttl", None, positive_float),
                   help="free a stream's state after this many seconds without events; default: never "
                        "[STREAMER_TTL]")
    g.add_argument("--max-message-bytes", type=positive_int, metavar="N",
                   default=env_default("max_message_bytes", DEFAULT_MAX_MESSAGE_BYTES, positive_int),
                   help=f"larger messages become dead letters (message_too_large); default {DEFAULT_MAX_MESSAGE_BYTES} "
                        "[STREAMER_MAX_MESSAGE_BYTES]")


def add_metrics_options(p, default_port: int | None) -> None:
    from streamer.cli import env_default
    from streamer.config import DEFAULT_METRICS_HOST as DEFAULT_HOST

    g = p.add_argument_group("metrics")
    off = "default: no server" if default_port is None else f"default {default_port}"
    g.add_argument("--metrics-port", type=_port, metavar="PORT",
                   default=env_default("metrics_port", default_port, _port),
                   help=f"serve Prometheus /metrics and /healthz on this port (0: any free port); {off} "
                        "[STREAMER_METRICS_PORT]")
    g.add_argument("--metrics-host", metavar="HOST", default=env_default("metrics_host", DEFAULT_HOST),
                   help=f"address to bind the metrics server to; default {DEFAULT_HOST} [STREAMER_METRICS_HOST]")


def engine_config(args):
    from streamer.config import EngineConfig

    return EngineConfig(on_gap=args.on_gap, max_streams=args.max_streams, ttl=args.ttl,
                        max_message_bytes=args.max_message_bytes)


def start_metrics_server(registry, host: str, port: int, prog: str, required: bool = True):
    """Start the /metrics server and say where on stderr; None (with a warning) if not `required`."""
    from streamer.http import MetricsServer

    server = MetricsServer(registry, host=host, port=port)
    try:
        server.start()
    except OSError as exc:
        message = (f"cannot serve metrics on {host}:{port} ({exc.strerror or exc}); "
                   "choose another --metrics-port (0 picks a free one)")
        if required:
            raise UserError(message) from None
        print(f"{prog}: warning: {message}; going on without /metrics", file=sys.stderr)
        return None
    print(f"{prog}: metrics on {server.url}/metrics", file=sys.stderr, flush=True)
    return server
