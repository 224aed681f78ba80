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

import numpy as np

from streamer.routing import Throttled

log = logging.getLogger("streamer.serve")

_CACHE_LIMIT = 200_000  # keys remembered; the cache is cleared when it grows past this


def murmur2_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a keyed record (Java client, kafka-python)."""
    return (murmur2_many([key])[0] & 0x7FFFFFFF) % partitions


_SEED, _M = 0x9747B28C, np.uint32(0x5BD1E995)


def murmur2_many(keys: list[bytes]) -> list[int]:
    """Kafka's murmur2 hash of each key (`org.apache.kafka.common.utils.Utils.murmur2`, kafka-python's
    ``murmur2``), computed for all keys of one length at once in uint32 numpy arithmetic (it wraps as the
    Java ints do): ~100x faster than hashing key by key in Python, which cost ~50 us per new stream."""
    out = [0] * len(keys)
    by_length: dict[int, list[int]] = {}
    for i, key in enumerate(keys):
        by_length.setdefault(len(key), []).append(i)
    with np.errstate(over="ignore"):
        for length, idx in by_length.items():
            for i, h in zip(idx, _murmur2_same_length([keys[i] for i in idx], length).tolist()):
                out[i] = h
    return out


def _murmur2_same_length(keys: list[bytes], length: int) -> np.ndarray:
    data = np.frombuffer(b"".join(keys), np.uint8).reshape(len(keys), length)
    h = np.full(len(keys), (_SEED ^ length) & 0xFFFFFFFF, np.uint32)
    n4 = length // 4
    words = np.ascontiguousarray(data[:, :4 * n4]).view("<u4")  # little-endian 4-byte blocks
    for i in range(n4):
        k = words[:, i] * _M
        k ^= k >> np.uint32(24)
        k *= _M
        h *= _M
        h ^= k
    tail = data[:, 4 * n4:].astype(np.uint32)
    extra = length % 4
    if extra >= 3:
        h ^= tail[:, 2] << np.uint32(16)
    if extra >= 2:
        h ^= tail[:, 1] << np.uint32(8)
    if extra >= 1:
        h ^= tail[:, 0]
        h *= _M
    h ^= h >> np.uint32(13)
    h *= _M
    h ^= h >> np.uint32(15)
    return h


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
        new = [key for key in set(keys) if key is not None and key not in cache]
        if new:
            if len(cache) + len(new) > _CACHE_LIMIT:
                cache.clear()
            counts = [n for n in self._counts if n > 0]
            cache.update((key, tuple((h & 0x7FFFFFFF) % n for n in counts)) for key, h in zip(new, murmur2_many(new)))
        wrong = 0
        example = None
        for p, key in zip(parts, keys):
            if key is None:
                continue  # a missing key is a key mismatch (streamer.routing)
            want = cache[key]
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
