"""`streamer` command line: the only place that wires objects from flags and environment.

Each sub-command lives in `streamer/commands/<name>.py` and exposes
`register(subparsers)`, which adds its parser and sets `func(args) -> int`.
Heavy imports (TensorFlow) happen inside the command functions, so `--help` stays fast.
"""

from __future__ import annotations

import os

# The step kernels run small matmuls: extra BLAS threads only add contention (measured ~5x slower at
# batch 256 on a busy 2-core box). Scale out with processes instead. Must be set before numpy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import importlib
import sys

from models.errors import ModelError
from streamer.errors import UserError

# Order is the order shown in --help.
COMMANDS = ["train", "predict", "convert", "replay", "demo", "serve", "topics", "produce"]
# Commands that may import TensorFlow: its native start-up lines are filtered off their stderr.
TF_COMMANDS = {"train", "predict", "convert", "replay", "demo"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse's own convention)
        self.exit(2, f"{self.prog}: error: {message}\n")


def env_default(name: str, default=None, cast=str):
    """Default for a flag from the environment variable STREAMER_<NAME>, else `default`."""
    raw = os.environ.get("STREAMER_" + name.upper().replace("-", "_"))
    if raw is None or raw == "":
        return default
    try:
        return cast(raw)
    except ValueError as exc:
        raise UserError(f"environment variable STREAMER_{name.upper()}={raw!r} is invalid: {exc}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="streamer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"streamer.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"streamer.commands.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command not in TF_COMMANDS:
            return int(args.func(args) or 0)
        from streamer.native_log import NativeLogFilter

        with NativeLogFilter():
            return int(args.func(args) or 0)
    except (UserError, ModelError) as exc:
        message = " ".join(str(exc).split())  # always one line
        print(f"streamer: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("streamer: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
