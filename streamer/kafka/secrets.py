"""Secrets (the SASL password, the TLS key's password): where they may come from, and where they may not go.

They come from the environment (STREAMER_SASL_PASSWORD, STREAMER_SSL_KEY_PASSWORD) or from a file
(--sasl-password-file, --ssl-key-password-file: a mounted Kubernetes/compose secret), never from a flag: a
command line is readable by anyone who can list processes (`ps`, /proc/PID/cmdline). The old flags are
refused with a line that says what to use instead.

They must not reach a log line: kafka-python logs its whole configuration, the password included, at DEBUG
(`--kafka-log-level DEBUG`). `mask_in_logs(secrets)` adds a filter to every handler of the root logger that
replaces them with *** in every record (message, arguments and traceback text).
"""

from __future__ import annotations

import argparse
import logging
import os

from streamer.errors import UserError

MASK = "***"


def read_secret_file(path: str, flag: str) -> str:
    """The secret in `path`: the file's text without the trailing newline that editors and `echo` add."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise UserError(f"{flag} {path}: cannot read it ({exc.strerror or exc}); give a readable file that holds "
                        "only the secret") from None
    except UnicodeDecodeError:
        raise UserError(f"{flag} {path}: not UTF-8 text; the file must hold only the secret") from None
    secret = text.rstrip("\r\n")
    if not secret:
        raise UserError(f"{flag} {path} is empty; it must hold the secret")
    return secret


def secret_from(file_path: str | None, file_flag: str, env_name: str) -> str | None:
    """The secret from `file_path` when given, else from the environment variable, else None."""
    if file_path:
        return read_secret_file(file_path, file_flag)
    value = os.environ.get(env_name)
    return value if value else None


class RefuseSecretFlag(argparse.Action):
    """A flag that would put a secret on the command line: an error that says what to use instead."""

    def __init__(self, option_strings, dest, env_name: str, file_flag: str, **kwargs):
        self.env_name, self.file_flag = env_name, file_flag
        super().__init__(option_strings, dest, nargs="?", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} would show the secret to anyone who can list processes (ps); set "
                     f"{self.env_name} or use {self.file_flag} FILE instead")


class SecretMask(logging.Filter):
    """Replaces the secrets in a record's text (a handler filter: it sees the records of every logger)."""

    def __init__(self, secrets):
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        masked = self.mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.mask(record.exc_text)
        if record.stack_info:
            record.stack_info = self.mask(record.stack_info)
        return True

    def mask(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text


def mask_in_logs(secrets) -> SecretMask:
    """Mask `secrets` in everything the root logger's handlers write (call after logging is set up)."""
    mask = SecretMask(secrets)
    for handler in logging.getLogger().handlers:
        handler.addFilter(mask)
    return mask
