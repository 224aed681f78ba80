"""Keep TensorFlow's native start-up chatter off a command's stderr.

TensorFlow 2.21 writes lines such as ``WARNING: All log messages before absl::InitializeLog() is called are
written to STDERR``, ``I0000 ... cudart_stub.cc:31] Could not find cuda drivers on your machine`` and, on
machines without a GPU driver, ``E0000 ... failed call to cuInit`` straight to file descriptor 2 from C++,
where ``TF_CPP_MIN_LOG_LEVEL`` no longer reaches. A one-line CLI error buried under them is no longer one line.

`NativeLogFilter` points file descriptor 2 at a pipe for the duration of a command; a thread copies every
line to the real stderr except those chatter lines (absl info/warning lines, the error lines about missing
CUDA drivers, and oneDNN's note that a CPU without AVX-512 gets a slower kernel). Python's own stderr passes
through unchanged. ``STREAMER_TF_LOGS=1`` turns the filter off.
"""

from __future__ import annotations

import os
import re
import sys
import threading

# absl's native log line: severity letter, MMDD, time, thread id, file:line]
_ABSL = re.compile(rb"^[IWEF]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [\w.+-]+:\d+\] ")
_CHATTER = (
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
)


# an error-level line on CPUs without AVX-512 that only says a slower kernel is used (a Masking model's not_equal)
_ONEDNN_FALLBACK = b"oneDNN supports DT_BOOL only on platforms with AVX-512"


def is_chatter(line: bytes) -> bool:
    """True for TensorFlow's native info/warning lines and its complaints about absent CUDA drivers."""
    if line.rstrip(b"\r\n") in _CHATTER:
        return True
    if not _ABSL.match(line):
        return False
    return line[:1] in b"IW" or b"cuInit" in line or b"cuda" in line.lower() or _ONEDNN_FALLBACK in line


class NativeLogFilter:
    """Context manager: fd 2 goes through a filtering thread while the block runs."""

    def __init__(self, stream_fd: int = 2):
        self.fd = stream_fd
        self._saved: int | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "NativeLogFilter":
        if os.environ.get("STREAMER_TF_LOGS", "") not in ("", "0"):
            return self
        try:
            sys.stderr.flush()
            self._saved = os.dup(self.fd)
            read_end, write_end = os.pipe()
            os.dup2(write_end, self.fd)
            os.close(write_end)
        except OSError:  # no usable stderr: nothing to filter
            self._saved = None
            return self
        self._thread = threading.Thread(target=self._copy, args=(read_end, self._saved), name="stderr-filter",
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._saved is None:
            return
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(self._saved, self.fd)  # closes the pipe's last write end: the thread sees EOF
        self._thread.join(5)
        os.close(self._saved)
        self._saved = None

    @staticmethod
    def _copy(read_end: int, out: int) -> None:
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            pending = b""
            while True:
                chunk = pipe.read(65536)
                if not chunk:
                    break
                lines = (pending + chunk).split(b"\n")
                pending = lines.pop()
                kept = b"".join(line + b"\n" for line in lines if not is_chatter(line))
                if kept:
                    os.write(out, kept)
            if pending and not is_chatter(pending):
                os.write(out, pending)
