"""Partitions added to the input topic while serving.

The consumer refreshes the topic's metadata every ``--metadata-max-age-ms`` (5 s; the default of both
kafka-python and librdkafka (``topic.metadata.refresh.interval.ms``) is 5 minutes, during which new
partitions' events would sit unread and unreported). `TopologyWatch`
looks at the partition count every second: growth is logged and exported
(``streamer_kafka_input_partitions``), and the changelog must follow, because changelog partition p
holds the state of input partition p:

- with ``--create-topics`` serve adds the partitions to the changelog itself (CreatePartitions) and waits
  until its producer's metadata has them; the group's next rebalance (which the leader starts on the same
  metadata change) assigns the new input partitions; their state is restored (empty) and they are served;
- without it serve stops with exit code 2 and one line saying which command adds them.

The output topic keeps its partition count: a stream of an input partition beyond it has its predictions
partitioned by key instead of co-partitioned.
"""

from __future__ import annotations

import logging

from streamer.errors import UserError

log = logging.getLogger("streamer.serve")


class TopologyWatch:
    def __init__(self, topics, clients, metrics, *, changelog_partitions: int | None,
                 output_partitions: int | None, create_topics: bool, await_changelog=None):
        self.topics = topics
        self.await_changelog = await_changelog  # (topic, partitions): wait until the producer knows them
        self.clients = clients
        self.metrics = metrics
        self.changelog_partitions = changelog_partitions
        self.output_partitions = output_partitions
        self.create_topics = create_topics
        self.input_partitions: int | None = None

    def observe(self, count: int) -> None:
        """The input topic's partition count as the consumer's metadata has it now."""
        if not count or count == self.input_partitions:
            return
        before, self.input_partitions = self.input_partitions, count
        self.metrics.input_partitions.set(count)
        if before is None:
            return
        if count < before:  # Kafka cannot remove partitions; a recreated topic would land here
            log.error("input topic %s now has %d partitions, had %d: was it deleted and recreated?",
                      self.topics.input, count, before)
            return
        log.warning("input topic %s grew from %d to %d partitions", self.topics.input, before, count)
        self.ensure_changelog(count)

    def ensure_changelog(self, needed: int) -> None:
        """Make sure the changelog has `needed` partitions: add them (--create-topics) or stop (UserError)."""
        have = self.changelog_partitions
        if have is None or needed <= have:
            return
        changelog = self.topics.changelog
        if not self.create_topics:
            raise UserError(f"input topic {self.topics.input} now has {needed} partitions, but changelog {changelog} "
                            f"has only {have}; add partitions to the changelog to match (kafka-topics --alter "
                            f"--topic {changelog} --partitions {needed}) and restart, or run serve with "
                            "--create-topics to have it done")
        self.changelog_partitions = self._add_partitions(changelog, needed)
        log.warning("changelog %s extended from %d to %d partitions to match the input topic", changelog, have,
                    self.changelog_partitions)
        if self.await_changelog is not None:
            self.await_changelog(changelog, self.changelog_partitions)

    def _add_partitions(self, topic: str, needed: int) -> int:
        admin = self.clients.admin()  # a streamer.kafka.client.Admin (either client)
        try:
            admin.create_partitions(topic, needed)  # fine if another instance added them first
            count = admin.partition_counts([topic])[topic] or 0
        finally:
            admin.close()
        if count < needed:
            raise UserError(f"could not add partitions to changelog {topic} ({count} of {needed}); add them with "
                            f"kafka-topics --alter --topic {topic} --partitions {needed} and restart")
        return count

    def output_partition(self, input_partition: int) -> int | None:
        """The output partition of a co-partitioned prediction (None: partition by key)."""
        n = self.output_partitions
        return input_partition if n is not None and input_partition < n else None
