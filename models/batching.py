"""Length-bucketed, post-padded training batches whose order (and membership) is reshuffled every epoch.

Why post-padding (real steps first, zeros after): a forward RNN is causal, so the outputs and the
gradients at real steps cannot depend on pads that come after them. Masking then only has to keep the
pads out of the loss, and the sample-weight route (a model without a Masking layer) is exact too: zero
weights on the pads give the same loss and gradients as the unpadded sequences. Pre-padding would feed
the pads through the state *before* the real steps, so without a Masking layer it changes every
output. Post-padding is also the layout cuDNN's masked LSTM/GRU kernels require (right-padded masks).

Two ways to keep pads out of the loss:
- the model has a `Masking` layer (mask_value 0): batches are `(x, y)`; Keras' mask makes the loss the
  mean over real steps and the RNN keeps its state through masked steps;
- it has none: batches are `(x, y, w)` with `w` 0 on pads and `B*T/n_real` on real steps, so Keras'
  "sum over batch size" reduction (sum / (B*T)) also comes out as the mean over real steps.

Bucketing: each epoch the sequences are shuffled, cut into pools of `pool_batches * batch_size`, each
pool sorted by length and cut into batches, and the batch order shuffled. Similar lengths share a batch
(little padding), yet no two epochs see the same batches in the same order. A batch also holds at most
`max_batch_steps` padded steps (default: a full batch at twice the median length), so on long-tailed
data the longest sequences go in smaller batches instead of dragging many short ones to their length.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from models.data import SeqRecord, post_pad, step_mask
from models.errors import DataError


def plan_batches(
    lengths: Sequence[int],
    batch_size: int,
    rng: np.random.Generator,
    pool_batches: int = 64,
    max_batch_steps: int | None = None,
) -> list[np.ndarray]:
    """Index arrays, one per batch: shuffled, pooled, sorted by length within a pool, order shuffled.

    A batch holds at most `batch_size` sequences and, when `max_batch_steps` is set, at most that many
    padded steps (so the long tail of a long-tailed length distribution goes in smaller batches).
    """
    lengths = np.asarray(lengths)
    perm = rng.permutation(len(lengths))
    pool = max(1, pool_batches) * batch_size
    batches = []
    for start in range(0, len(perm), pool):
        chunk = perm[start : start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        first = 0
        while first < len(chunk):
            n = min(batch_size, len(chunk) - first)
            if max_batch_steps:
                # sorted ascending: the batch's longest is its last; shrink until it fits the budget
                while n > 1 and n * lengths[chunk[first + n - 1]] > max_batch_steps:
                    n -= 1
            batches.append(chunk[first : first + n])
            first += n
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def default_max_batch_steps(lengths: Sequence[int], batch_size: int) -> int:
    """Padded-step budget per batch: a full batch at twice the median length (or the longest, if smaller)."""
    lengths = np.asarray(lengths)
    return int(batch_size * min(2 * np.median(lengths), lengths.max()))


def padded_steps(lengths: Sequence[int], plan: Sequence[np.ndarray]) -> int:
    """Total cells (sequence x step) the batches of `plan` hold, pads included."""
    lengths = np.asarray(lengths)
    return int(sum(len(b) * lengths[b].max() for b in plan))


def pad_to_max_waste(lengths: Sequence[int]) -> float:
    """Percent of padded steps if every sequence were padded to the longest one (the naive way)."""
    lengths = np.asarray(lengths)
    total = len(lengths) * lengths.max()
    return 100.0 * (1.0 - lengths.sum() / total)


class BucketedBatches:
    """Training batches for `model.fit`: use `as_tf_dataset()` (or iterate `epoch()` yourself).

    `masking=True`: batches are (x, y), for a model with a Masking(0) layer.
    `masking=False`: batches are (x, y, w) with zero weights on the pads.
    Padding waste over all epochs served so far is in `waste_pct` (compare `pad_to_max_waste_pct`).
    """

    def __init__(
        self,
        records: Sequence[SeqRecord],
        batch_size: int = 32,
        masking: bool = True,
        seed: int | None = 0,
        pool_batches: int = 64,
        max_batch_steps: int | None = -1,
    ):
        if not records:
            raise DataError("no training sequences")
        if batch_size < 1:
            raise DataError(f"batch size must be >= 1, got {batch_size}")
        if any(r.targets is None for r in records):
            raise DataError("training needs targets for every sequence")
        if any(r.features.ndim != 2 for r in records):
            raise DataError("training on token sequences (flat lists of ids) is not supported; "
                            "give each step as a list of numbers")
        self.records = list(records)
        self.lengths = np.array([len(r) for r in self.records])
        self.feature_size = int(self.records[0].features.shape[1])
        self.output_size = int(self.records[0].targets.shape[1])
        self.batch_size = int(batch_size)
        self.masking = bool(masking)
        self.pool_batches = int(pool_batches)
        if max_batch_steps == -1:  # default: a budget, so long-tailed data puts its longest in small batches
            max_batch_steps = default_max_batch_steps(self.lengths, self.batch_size)
        self.max_batch_steps = max_batch_steps
        self._rng = np.random.default_rng(seed)
        self._next_plan = self._plan()
        self.real_steps = 0
        self.total_steps = 0
        self.epochs_served = 0

    def _plan(self) -> list[np.ndarray]:
        return plan_batches(self.lengths, self.batch_size, self._rng, self.pool_batches, self.max_batch_steps)

    def __len__(self) -> int:
        """Batches in the next epoch (it can vary by one or two between epochs under a step budget)."""
        return len(self._next_plan)

    @property
    def waste_pct(self) -> float:
        """Percent of the cells in the batches served so far that were pads."""
        if self.total_steps == 0:  # nothing served yet: what the next epoch will waste
            return 100.0 * (1.0 - self.lengths.sum() / padded_steps(self.lengths, self._next_plan))
        return 100.0 * (1.0 - self.real_steps / self.total_steps)

    @property
    def pad_to_max_waste_pct(self) -> float:
        return pad_to_max_waste(self.lengths)

    def make_batch(self, idx: np.ndarray) -> tuple:
        """Post-padded (x, y[, w]) for the sequences `idx`."""
        recs = [self.records[i] for i in idx]
        lens = self.lengths[idx]
        x = post_pad([r.features for r in recs])
        y = post_pad([r.targets for r in recs])
        self.real_steps += int(lens.sum())
        self.total_steps += int(x.shape[0] * x.shape[1])
        if self.masking:
            return x, y
        w = step_mask(lens, x.shape[1])
        w *= w.size / max(float(lens.sum()), 1.0)
        return x, y, w

    def epoch(self) -> Iterator[tuple]:
        """One epoch of batches under a fresh plan (new membership and order)."""
        plan, self._next_plan = self._next_plan, self._plan()
        self.epochs_served += 1
        for idx in plan:
            yield self.make_batch(idx)

    def output_signature(self):
        import tensorflow as tf

        spec = [
            tf.TensorSpec((None, None, self.feature_size), tf.float32),
            tf.TensorSpec((None, None, self.output_size), tf.float32),
        ]
        if not self.masking:
            spec.append(tf.TensorSpec((None, None), tf.float32))
        return tuple(spec)

    def stream(self) -> Iterator[tuple]:
        """Epoch after epoch of batches, endlessly (each pass a fresh plan)."""
        while True:
            yield from self.epoch()

    def as_tf_dataset(self, endless: bool = True):
        """A `tf.data.Dataset` of the batches with (batch, time) both dynamic.

        `endless=True` (for `fit(..., steps_per_epoch=len(batches))`): passes follow each other without
        end, each under a fresh plan. Under a step budget the number of batches per pass can vary by one
        or two, and Keras copes badly with epochs of changing size, so a Keras "epoch" is a fixed number
        of batches here, while every pass over the data still shows each sequence exactly once.
        `endless=False`: one pass per iteration of the dataset.

        An explicit signature matters: Keras infers a generator's/PyDataset's shapes from its first two
        batches, so two equal-length first batches would pin the time axis and a later batch would fail.
        """
        import tensorflow as tf

        source = self.stream if endless else self.epoch
        return tf.data.Dataset.from_generator(source, output_signature=self.output_signature()).prefetch(2)
