"""Adapter: a PrefetchGenerator behind `tf.data`, for `model.fit` and tf.distribute.

One layer owns the parallelism: the PrefetchGenerator's threads. The dataset
only moves its batches into TensorFlow, with an explicit output signature and
tf.data's autotuning off, so no second pool of prefetch threads competes.
"""

from __future__ import annotations

from collections.abc import Callable

from loader.prefetch import PrefetchGenerator


def to_tf_dataset(sequence, workers: int = 2, depth: int = 4, infinite: bool = False, start: int = 0,
                  metrics=None, stop_when: Callable[[], bool] | None = None):
    """A `tf.data.Dataset` of (x uint8 [B,T,H,W,3], y int32 [B]) from `sequence`.

    Each iteration of the dataset runs its own PrefetchGenerator and closes it
    (joining its threads) when the iteration ends or is abandoned. With
    `stop_when`, an iteration ends early once it returns True (a job being
    stopped should not sit through a whole validation pass).
    """
    import tensorflow as tf  # imported here so the loader itself does not need TensorFlow

    height, width = sequence.size
    signature = (
        tf.TensorSpec((None, sequence.frames, height, width, 3), tf.uint8),
        tf.TensorSpec((None,), tf.int32),
    )

    def batches():
        with PrefetchGenerator(sequence, workers, depth, infinite, start, metrics) as generator:
            for batch in generator:
                if stop_when is not None and stop_when():
                    return
                yield batch

    options = tf.data.Options()
    options.autotune.enabled = False
    # Each worker loads its own shard (VideoSequence(shard=...)); tf.distribute must not re-shard.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return tf.data.Dataset.from_generator(batches, output_signature=signature).with_options(options)
