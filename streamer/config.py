"""Engine settings and their defaults (no numpy here: the CLI builds parsers from these cheaply)."""

from __future__ import annotations

from dataclasses import dataclass

GAP_POLICIES = ("apply", "reject", "reset")
DEFAULT_GAP_POLICY = "apply"
KEY_MISMATCH_POLICIES = ("accept", "reject")  # a message whose key is missing or is not its stream_id
DEFAULT_MAX_MESSAGE_BYTES = 1 << 20  # 1 MiB
DEFAULT_METRICS_HOST = "127.0.0.1"  # never 0.0.0.0 unless asked


@dataclass
class EngineConfig:
    """How the engine treats gaps, how many streams it holds and for how long, what it accepts."""

    on_gap: str = DEFAULT_GAP_POLICY
    max_streams: int | None = None  # None: unbounded; at the cap the least recently used stream is evicted
    ttl: float | None = None  # seconds of idleness before a stream's state is freed; None: never
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    initial_capacity: int = 1024
    on_key_mismatch: str = "accept"  # transports with keys (Kafka): serve it, counted (accept), or dead-letter it
    # Largest record (key + value + overhead) the transport can write to the output / dead-letter topic;
    # None: no limit (JSONL). See streamer.limits.
    max_output_record_bytes: int | None = None
    max_dead_letter_record_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.on_gap not in GAP_POLICIES:
            raise ValueError(f"on_gap must be one of {', '.join(GAP_POLICIES)}, got {self.on_gap!r}")
        if self.max_streams is not None and self.max_streams < 1:
            raise ValueError(f"max_streams must be >= 1, got {self.max_streams}")
        if self.ttl is not None and not self.ttl > 0:
            raise ValueError(f"ttl must be > 0 seconds, got {self.ttl}")
        if self.max_message_bytes < 1:
            raise ValueError(f"max_message_bytes must be >= 1, got {self.max_message_bytes}")
        if self.on_key_mismatch not in KEY_MISMATCH_POLICIES:
            raise ValueError(f"on_key_mismatch must be one of {', '.join(KEY_MISMATCH_POLICIES)}, "
                             f"got {self.on_key_mismatch!r}")
        if self.initial_capacity < 1:
            raise ValueError(f"initial_capacity must be >= 1, got {self.initial_capacity}")
