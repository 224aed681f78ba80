"""The topics of one deployment and how they are created and checked.

- input (``events``): events keyed by stream_id, so a stream's steps stay in one partition, in order;
- output (``predictions``): one record per event that applied a step, keyed by stream_id;
- dead letters (``events.dlq``): refused messages with their source topic/partition/offset;
- changelog (``<group>-<input>-changelog``): per-stream state, compacted, with exactly as many
  partitions as the input topic: changelog partition p holds the state of the streams of input
  partition p. It is named after the consumer group because state and committed offsets belong
  together: two groups reading one input topic (say, two models) each keep their own.

The functions take a `streamer.kafka.client.Admin` (either client's; a kafka-python KafkaAdminClient
is wrapped by `as_admin`).
"""

from __future__ import annotations

from dataclasses import dataclass

from streamer.errors import UserError

CHANGELOG_CONFIGS = {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1", "segment.ms": "3600000"}


def default_changelog_topic(group_id: str, input_topic: str) -> str:
    return f"{group_id}-{input_topic}-changelog"


@dataclass(frozen=True)
class Topics:
    input: str = "events"
    output: str = "predictions"
    dlq: str = "events.dlq"
    changelog: str = ""

    def __post_init__(self) -> None:
        names = self.all()
        if len(set(names)) != len(names):
            raise UserError(f"input, output, dead-letter and changelog topics must differ, got {', '.join(names)}")
        for name in names:
            if not name or len(name) > 249 or not all(c.isalnum() or c in "._-" for c in name):
                raise UserError(f"invalid topic name {name!r}: use 1-249 characters from a-z A-Z 0-9 . _ -")

    @classmethod
    def named(cls, group_id: str, input: str = "events", output: str = "predictions", dlq: str = "events.dlq",
              changelog: str | None = None) -> "Topics":
        return cls(input, output, dlq, changelog or default_changelog_topic(group_id, input))

    def all(self) -> list[str]:
        return [self.input, self.output, self.dlq, self.changelog]


def as_admin(admin):
    """`admin` as a `streamer.kafka.client.Admin`: a kafka-python KafkaAdminClient is wrapped (tests and
    scripts hold those), anything else is taken to be an `Admin` already."""
    if type(admin).__module__.startswith("kafka.") and type(admin).__name__ == "KafkaAdminClient":
        from streamer.kafka.kafka_python import KafkaPythonAdmin  # (no kafka-python import otherwise)

        return KafkaPythonAdmin(admin)
    return admin


def describe(admin, names: list[str]) -> dict[str, int | None]:
    """Partition count of each topic; None for a topic that does not exist. A topic the client may not
    Describe raises a FatalClientError (TOPIC_AUTHORIZATION_FAILED: Kafka then does not say whether it exists)."""
    return as_admin(admin).partition_counts(list(names))


def cleanup_policy(admin, topic: str) -> str:
    return str(as_admin(admin).topic_config(topic, "cleanup.policy") or "delete")


def ensure(admin, topics: Topics, *, create: bool, partitions: int | None = None,
           replication_factor: int = -1) -> dict[str, int]:
    """Check (and with `create`, create the missing of) the four topics; returns partition counts.

    Missing topics get `partitions` partitions (default: the input topic's count when it exists), except
    the changelog, which always gets the input topic's count. Raises UserError when a topic is missing
    and `create` is off, when an existing changelog's partition count differs from the input topic's,
    or when the changelog is not compacted.
    """
    from streamer.kafka.client import TopicSpec

    admin = as_admin(admin)
    counts = describe(admin, topics.all())
    check_changelog(counts, topics)
    missing = [n for n, c in counts.items() if c is None]
    if missing and not create:
        raise UserError(f"topic(s) {', '.join(missing)} do not exist; create them with `streamer topics create "
                        f"--partitions N` (same flags) or start serve with --create-topics")
    if missing:
        n_input = counts[topics.input] or partitions or 1
        specs = {}
        for name in missing:
            n = n_input if name in (topics.input, topics.changelog) else (partitions or n_input)
            configs = dict(CHANGELOG_CONFIGS) if name == topics.changelog else {}
            specs[name] = TopicSpec(n, replication_factor, configs)
        admin.create_topics(specs)  # one that another instance created at the same moment is fine
        counts = describe(admin, topics.all())
    check_changelog(counts, topics)
    policy = cleanup_policy(admin, topics.changelog)
    if "compact" not in policy:
        raise UserError(f"changelog topic {topics.changelog} has cleanup.policy={policy}: old state would be "
                        "deleted by retention; set cleanup.policy=compact on it (kafka-configs --alter)")
    return {n: int(c) for n, c in counts.items()}


def check_changelog(counts: dict[str, int | None], topics: Topics) -> None:
    n_in, n_cl = counts.get(topics.input), counts.get(topics.changelog)
    if n_in is not None and n_cl is not None and n_in != n_cl:
        raise UserError(f"changelog topic {topics.changelog} has {n_cl} partitions but input topic {topics.input} "
                        f"has {n_in}: changelog partition p must hold the state of input partition p. Recreate the "
                        f"changelog with {n_in} partitions (state is rebuilt from the retained input) or use "
                        "another --changelog-topic")
