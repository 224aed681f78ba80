"""streamer.native_log: TensorFlow's native start-up lines are kept off a command's stderr, nothing else is."""

from __future__ import annotations

import subprocess
import sys

from streamer.native_log import is_chatter

ABSL_INFO = b"I0000 00:00:1796402417.816734   17335 cudart_stub.cc:31] Could not find cuda drivers on your machine\n"
ABSL_CUINIT = (b"E0000 00:00:1796402419.834112   17335 cuda_platform.cc:52] failed call to cuInit: INTERNAL: "
               b"CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n")
ABSL_REAL_ERROR = b"E0000 00:00:1796402419.834112   17335 op_kernel.cc:1830] OP_REQUIRES failed: out of memory\n"
ABSL_ONEDNN = (b"E0000 00:00:1796416283.374067   25537 util.cc:131] oneDNN supports DT_BOOL only on platforms with "
               b"AVX-512. Falling back to the default Eigen-based implementation if present.\n")
PREAMBLE = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"


def test_chatter_lines_are_recognised_and_real_errors_are_not():
    assert is_chatter(ABSL_INFO) and is_chatter(ABSL_CUINIT) and is_chatter(ABSL_ONEDNN) and is_chatter(PREAMBLE)
    assert not is_chatter(ABSL_REAL_ERROR)
    assert not is_chatter(b"streamer: error: layer 'b' (Bidirectional) cannot stream: ...\n")
    assert not is_chatter(b"Traceback (most recent call last):\n")


def test_the_filter_drops_native_chatter_and_passes_everything_else_in_order():
    code = f"""
import os, sys
from streamer.native_log import NativeLogFilter
with NativeLogFilter():
    os.write(2, {PREAMBLE!r} + {ABSL_INFO!r})
    print("python line", file=sys.stderr, flush=True)
    os.write(2, {ABSL_CUINIT!r} + {ABSL_REAL_ERROR!r} + b"no newline at the end")
print("after the block", file=sys.stderr)
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stderr.decode().splitlines() == [
        "python line", ABSL_REAL_ERROR.decode().rstrip("\n"), "no newline at the end" + "after the block"]


def test_streamer_tf_logs_turns_the_filter_off():
    code = f"""
import os
from streamer.native_log import NativeLogFilter
with NativeLogFilter():
    os.write(2, {ABSL_INFO!r})
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60,
                         env={**__import__("os").environ, "STREAMER_TF_LOGS": "1"})
    assert run.stderr == ABSL_INFO
