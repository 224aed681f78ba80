"""Prometheus metrics of the Kafka transport (prefix ``streamer_kafka_``), on the engine's registry.

Labels are bounded: partition numbers, outcomes and error kinds; never stream ids.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Checkpoints and restores: 1 ms .. 2 min.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

ERROR_KINDS = (
    "connect",          # cannot bootstrap / reach the brokers (start-up, recovery)
    "poll",             # consumer.poll failed
    "produce",          # a prediction, dead letter or changelog record was not delivered
    "flush",            # producer.flush did not finish in --checkpoint-timeout
    "commit",           # the offset commit failed (replayed and deduplicated later)
    "transaction",      # begin/commit/abort of an exactly-once transaction failed
    "restore",          # reading the changelog failed
    "changelog_record",  # an unreadable changelog record (skipped)
    "listener",         # a rebalance callback failed
    "group",            # the consumer stayed outside a stable group too long and was replaced
    "internal",         # building a poll's records raised an unexpected error (the records were skipped)
)
REBALANCE_EVENTS = ("assigned", "revoked", "lost")
CHECKPOINT_OUTCOMES = ("ok", "failed")
CHANGELOG_KINDS = ("state", "tombstone")
PRODUCED_KINDS = ("prediction", "dead_letter")
TRANSACTION_OUTCOMES = ("committed", "aborted")
MODEL_CHANGE_ACTIONS = ("reset", "refused")


class KafkaMetrics:
    """Every Kafka transport metric, registered in `registry` (the engine `Metrics.registry`)."""

    def __init__(self, registry: CollectorRegistry):
        r = registry
        self.registry = registry
        self.consumer_lag = Gauge("streamer_kafka_consumer_lag_records", "Input records not yet processed, per "
                                  "assigned partition (high watermark minus next offset)", ["partition"], registry=r)
        self.connections = Gauge("streamer_kafka_connections", "Open connections of the group consumer to the "
                                 "brokers (0: the brokers are unreachable; counted once per outage as "
                                 "streamer_kafka_errors_total{kind=\"connect\"})", registry=r)
        self.assigned_partitions = Gauge("streamer_kafka_assigned_partitions", "Input partitions owned by this "
                                         "instance", registry=r)
        self.checkpoints = Counter("streamer_kafka_checkpoints_total", "Checkpoints (changelog + offsets, or one "
                                   "transaction) by outcome", ["outcome"], registry=r)
        self.checkpoint_duration = Histogram("streamer_kafka_checkpoint_duration_seconds", "Time of one checkpoint: "
                                             "flush, changelog, offsets (or the transaction commit)",
                                             buckets=DURATION_BUCKETS, registry=r)
        self.changelog_records = Counter("streamer_kafka_changelog_records_total", "Changelog records written: "
                                         "state, or tombstone (stream ended, expired or evicted)", ["kind"], registry=r)
        self.produced = Counter("streamer_kafka_produced_records_total", "Records sent to the output and "
                                "dead-letter topics", ["kind"], registry=r)
        self.restores = Counter("streamer_kafka_restores_total", "Changelog restores (one per batch of newly "
                                "assigned partitions or recovery)", registry=r)
        self.restore_duration = Histogram("streamer_kafka_restore_duration_seconds", "Time to read changelog "
                                          "partitions to their end and load their state", buckets=DURATION_BUCKETS,
                                          registry=r)
        self.restored_streams = Counter("streamer_kafka_restored_streams_total", "Stream states loaded from the "
                                        "changelog", registry=r)
        self.rebalances = Counter("streamer_kafka_rebalances_total", "Rebalance callbacks: assigned, revoked, lost "
                                  "(forced out of the group: state dropped without a checkpoint)", ["event"],
                                  registry=r)
        self.errors = Counter("streamer_kafka_errors_total", "Kafka errors by kind (each is retried or recovered "
                              "from; none loses data)", ["kind"], registry=r)
        self.recoveries = Counter("streamer_kafka_recoveries_total", "Rewinds to the last checkpoint after an "
                                  "error: state reloaded from the changelog, input re-read from committed offsets",
                                  registry=r)
        self.transactions = Counter("streamer_kafka_transactions_total", "Exactly-once transactions by outcome",
                                    ["outcome"], registry=r)
        self.partitioner_mismatches = Counter("streamer_kafka_partitioner_mismatch_total", "Keyed input messages "
                                              "not in the partition Kafka's default partitioner (murmur2) gives "
                                              "their key: a producer uses another partitioner", registry=r)
        self.input_partitions = Gauge("streamer_kafka_input_partitions", "Partitions of the input topic (as of the "
                                      "last metadata refresh, every --metadata-max-age-ms)", registry=r)
        self.model_changes = Counter("streamer_kafka_state_model_changes_total", "Checkpointed stream states made "
                                     "by another model version: reset (state discarded, step counter kept) or "
                                     "refused (--on-model-change refuse)", ["action"], registry=r)
        for kind in ERROR_KINDS:
            self.errors.labels(kind)
        for event in REBALANCE_EVENTS:
            self.rebalances.labels(event)
        for outcome in CHECKPOINT_OUTCOMES:
            self.checkpoints.labels(outcome)
        for kind in CHANGELOG_KINDS:
            self.changelog_records.labels(kind)
        for kind in PRODUCED_KINDS:
            self.produced.labels(kind)
        for outcome in TRANSACTION_OUTCOMES:
            self.transactions.labels(outcome)
        for action in MODEL_CHANGE_ACTIONS:
            self.model_changes.labels(action)
        self._lag_partitions: set[int] = set()

    def error(self, kind: str, n: int = 1) -> None:
        self.errors.labels(kind).inc(n)

    def set_lag(self, lags: dict[int, int]) -> None:
        """Lag per owned partition; partitions no longer owned lose their series."""
        for p in self._lag_partitions - set(lags):
            try:
                self.consumer_lag.remove(str(p))
            except KeyError:
                pass
        for p, lag in lags.items():
            self.consumer_lag.labels(str(p)).set(lag)
        self._lag_partitions = set(lags)
