"""Which partition a key belongs to, and messages that arrived somewhere else (see `streamer.routing`).

Kafka's Java client and kafka-python put a keyed record in partition ``murmur2(key) & 0x7fffffff mod N``;
`streamer produce` does too, and every producer of the input topic must (kcat's default,
``consistent_random``, is a CRC32 hash and disagrees for most keys: use ``-X partitioner=murmur2_random``).
`PartitionerCheck` counts the keyed messages whose partition is not that one in
``streamer_kafka_partitioner_mismatch_total`` and logs them (the first at once, then at most one
summary a minute). Such messages are served; the count tells that some producer uses another partitioner,
before the split streams it causes show up. After partitions are added, a key's partition under any
partition count seen since start-up is accepted (producers learn of new partitions at their own pace).
Results are cached per key (streams repeat their keys).
"""

from __future__ import annotations

import logging

from streamer.routing import Throttled

log = logging.getLogger("streamer.serve")

_CACHE_LIMIT = 200_000  # keys remembered; the cache is cleared when it grows past this


def murmur2_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a keyed record (Java client, kafka-python)."""
    from kafka.partitioner.default import murmur2

    return (murmur2(key) & 0x7FFFFFFF) % partitions


class PartitionerCheck:
    def __init__(self, counter):
        self.counter = counter
        self._cache: dict[bytes, tuple[int, ...]] = {}
        self._counts: list[int] = []  # partition counts seen since start-up
        self._log = Throttled(log, logging.WARNING)

    def check(self, parts: list[int], keys: list, partitions: int | None) -> int:
        """Count (and log) the keyed messages of a poll (`parts`, `keys`: per message) not in their murmur2
        partition of the input's `partitions` (None: not known yet, nothing checked); returns how many."""
        if not partitions:
            return 0
        if partitions not in self._counts:  # the topic grew: a key may now be in another partition too
            self._cache.clear()
            self._counts.append(partitions)
        if partitions <= 1:
            return 0
        cache = self._cache
        wrong = 0
        example = None
        for p, key in zip(parts, keys):
            if key is None:
                continue  # a missing key is a key mismatch (streamer.routing)
            want = cache.get(key)
            if want is None:
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                want = cache[key] = tuple(murmur2_partition(key, n) for n in self._counts if n > 0)
            if p not in want:
                wrong += 1
                if example is None:
                    example = (key, p, want[-1])
        if wrong:
            self.counter.inc(wrong)
            key, p, want = example
            self._log(wrong, "message with key %r arrived on partition %d, but Kafka's default partitioner (murmur2) "
                      "puts it in partition %d of %d: a producer uses another partitioner (kcat: add -X "
                      "partitioner=murmur2_random), so its streams may be split across partitions (or it was produced "
                      "before partitions were added)", key[:80], p, want, partitions)
        return wrong
