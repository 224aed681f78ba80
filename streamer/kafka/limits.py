"""The record limits of a deployment, read from the broker at start-up (see `streamer.limits` for the rules).

Each topic's ``max.message.bytes`` (DescribeConfigs; the broker's ``message.max.bytes`` when the topic
does not set it) caps one record batch; the producer's ``max_request_size`` caps one record. The smaller
of the two is the limit every record to that topic keeps to. Serve refuses to start (exit 2, one line)
when a topic cannot hold what it must: the changelog a stream's state, the dead-letter topic an empty
dead letter, the output topic a one-step prediction.

The producer's batches are kept under the smallest of the limits as well (`batch_bytes`, the producer's
``batch_size``/``batch.size``): kafka-python splits a batch that the broker refuses as too large, but its
transactional producer cannot finish a split batch (3.0.12: the flush fails with "Future not done" and
every checkpoint after it too); librdkafka never splits one (its records fail with MSG_SIZE_TOO_LARGE).
The producer's largest record is ``max_request_size`` for kafka-python and ``message.max.bytes`` for
librdkafka (both `ClientTuning.max_request_size`).
"""

from __future__ import annotations

from dataclasses import dataclass

from streamer import limits
from streamer.errors import UserError

DEFAULT_TOPIC_LIMIT = 1048588  # Kafka's default message.max.bytes, for a broker that does not say


@dataclass(frozen=True)
class TopicLimits:
    """The largest record (key + value + overhead) each output topic accepts from this producer."""

    output: int
    dlq: int
    changelog: int

    def describe(self) -> str:
        return f"output {self.output}, dead letters {self.dlq}, changelog {self.changelog} bytes per record"


def max_message_bytes(admin, topics: list[str]) -> dict[str, int]:
    """``max.message.bytes`` of each topic (DescribeConfigs; `admin`: a `streamer.kafka.client.Admin`)."""
    out = {}
    for t in topics:
        value = admin.topic_config(t, "max.message.bytes")
        out[t] = int(value) if value not in (None, "") else DEFAULT_TOPIC_LIMIT
    return out


def read(admin, topics, max_request_size: int) -> TopicLimits:
    """The limits of `topics` (a `streamer.kafka.topics.Topics`) for a producer with `max_request_size`."""
    sizes = max_message_bytes(admin, [topics.output, topics.dlq, topics.changelog])
    return TopicLimits(output=min(sizes[topics.output], max_request_size), dlq=min(sizes[topics.dlq], max_request_size),
                       changelog=min(sizes[topics.changelog], max_request_size))


def batch_bytes(found: TopicLimits, configured: int) -> int:
    """The producer's batch.size: at most `configured`, and a batch of several records never over a topic's limit."""
    return max(1024, min(configured, min(found.output, found.dlq, found.changelog) - limits.RECORD_OVERHEAD))


def check(found: TopicLimits, topics, model) -> None:
    """Refuse (UserError) topics too small for what serve must write to them."""
    need = limits.changelog_record_bytes(model.version, model.state_size)
    if found.changelog < need:
        raise UserError(f"changelog topic {topics.changelog} accepts records of at most {found.changelog} bytes, but a "
                        f"stream's state record of model {model.version} ({model.state_size} floats) can take {need}; "
                        f"raise its max.message.bytes to at least {need} (kafka-configs --alter)")
    need = limits.smallest_dead_letter_bytes({"topic": topics.input, "partition": 2**31 - 1, "offset": 2**63 - 1})
    if found.dlq < need:
        raise UserError(f"dead-letter topic {topics.dlq} accepts records of at most {found.dlq} bytes, but even a dead "
                        f"letter without its payload takes up to {need}; raise its max.message.bytes")
    prediction = limits.PredictionLimit(found.output, model.output_size, model.version)
    if prediction.smallest_cap() < 1:
        raise UserError(f"output topic {topics.output} accepts records of at most {found.output} bytes: not even one "
                        f"prediction of model {model.version} ({model.output_size} outputs) fits; raise its "
                        "max.message.bytes")
