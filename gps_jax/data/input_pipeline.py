"""tf.data input for the jitted steps, over any :class:`gps_jax.data.splits.Split`.

Three iterators, all yielding numpy dicts:

* :func:`train_batches`: endless shuffled batches for fine-tuning;
* :func:`eval_batches`: one in-order pass with a padding 'mask';
* :func:`two_view_batches`: one shuffled pass of SupCon view pairs for selection.

Determinism: every random choice is derived from the ``seed`` argument (epoch
e is shuffled with a seed drawn from (seed, e); the augmentation of the example
at position p of epoch e uses a stateless seed drawn from (seed, process, e,
p)), so the same seed gives the same batches, and a run can restart at any step
without replaying earlier epochs (``start_step``). ``Dataset.shuffle`` also
mixes in TensorFlow's global seed: gps_jax never sets it, and a caller that
calls ``tf.random.set_seed`` changes the order (augmentations are unaffected).

Multi-host: process ``process_index`` of ``process_count`` reads every
``process_count``-th example (``Dataset.shard``) and makes batches of
``batch_size // process_count``: the global batch is laid out process-major,
ready for ``jax.make_array_from_process_local_data`` on a data-parallel mesh.
Every process makes the same number of steps per epoch (from the smallest
shard) and, in evaluation, the same number of batches (padding with masked
entries).

Image functions map a uint8 (H, W, 3) image to normalised float32 (S, S, 3):
``recipe_image_fns(recipe, ...)`` gives the train and eval functions of a
recipe: ``'resize'`` (VTAB-1k and the demo: resize to S, no augmentation) or
``'fgvc'`` (random resized crop + flip for train, resize 248 + centre crop S
for eval).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import tensorflow as tf

from gps_jax.data.augment import hide_gpus_from_tf, supcon_augment
from gps_jax.data.fgvc_augment import fgvc_eval_image, fgvc_train_image
from gps_jax.data.pipeline import preprocess
from gps_jax.data.splits import Split

hide_gpus_from_tf()

Batch = dict[str, np.ndarray]
TrainImageFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]  # (uint8 image, seed (2,)) -> f32
EvalImageFn = Callable[[tf.Tensor], tf.Tensor]  # uint8 image -> f32
RECIPES = ('resize', 'fgvc')
_AUTO = tf.data.AUTOTUNE
_MAX_SEED = 2**62


def _normalise(x: tf.Tensor, mean, std) -> tf.Tensor:
  return (x - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def recipe_image_fns(
  recipe: str,
  image_size: int,
  mean: Sequence[float],
  std: Sequence[float],
  *,
  resize_size: int | None = None,
) -> tuple[TrainImageFn, EvalImageFn]:
  """(train_fn(image, seed), eval_fn(image)) of a recipe; see the module docstring."""
  if recipe == 'resize':

    def train_fn(image, seed):
      del seed
      return preprocess(image, image_size, mean, std)

    def eval_fn(image):
      return preprocess(image, image_size, mean, std)

  elif recipe == 'fgvc':
    resize = resize_size or round(image_size / 0.9)  # 248 for 224 (timm crop_pct 0.9).

    def train_fn(image, seed):
      return _normalise(fgvc_train_image(image, seed, image_size), mean, std)

    def eval_fn(image):
      return _normalise(fgvc_eval_image(image, image_size, resize), mean, std)

  else:
    raise ValueError(f'config.data.recipe={recipe!r}: use one of {", ".join(RECIPES)}')
  return train_fn, eval_fn


def local_batch_size(batch_size: int, process_count: int) -> int:
  """The per-process share of a global batch; it must divide evenly."""
  if batch_size < 1 or batch_size % process_count:
    raise ValueError(
      f'batch size {batch_size} must be a positive multiple of the process count {process_count}'
    )
  return batch_size // process_count


def shard_size(num_examples: int, process_count: int) -> int:
  """Examples every process is sure to have: the smallest shard of the split."""
  return num_examples // process_count


def steps_per_epoch(num_examples: int, batch_size: int, process_count: int = 1) -> int:
  """Full global batches per epoch (each process drops its incomplete last batch)."""
  return shard_size(num_examples, process_count) // local_batch_size(batch_size, process_count)


def _shard(split: Split, process_index: int, process_count: int) -> tf.data.Dataset:
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} not in [0, {process_count})')
  ds = split.dataset
  return ds.shard(process_count, process_index) if process_count > 1 else ds


def _seed_pair(seed: int, *ints) -> tf.Tensor:
  """A stateless (2,) int64 seed from `seed` folded with each of `ints` (tensors ok)."""
  s = tf.constant([seed, 0], tf.int64)
  for i in ints:
    s = tf.random.experimental.stateless_fold_in(s, tf.cast(i, tf.int64))
  return s


def _scalar_seed(pair: tf.Tensor) -> tf.Tensor:
  """A non-negative int64 scalar (for Dataset.shuffle) drawn from a (2,) seed."""
  return tf.random.stateless_uniform([], pair, minval=0, maxval=_MAX_SEED, dtype=tf.int64)


class _NamedErrors:
  """Wraps a numpy iterator: a TF decoding error is re-raised naming the bad file."""

  def __init__(self, iterator, split: Split):
    self._it, self._split = iterator, split

  def __iter__(self):
    return self

  def __next__(self) -> Batch:
    try:
      return next(self._it)
    except tf.errors.OpError as e:
      error = self._split.find_bad_example()
      if error is not None:
        raise error from e
      raise RuntimeError(f'{self._split.name}: input pipeline failed: {e.message}') from e


def train_batches(
  split: Split,
  *,
  batch_size: int,
  image_fn: TrainImageFn,
  seed: int,
  start_step: int = 0,
  process_index: int = 0,
  process_count: int = 1,
  shuffle_buffer: int = 0,
  cache: bool = True,
) -> Iterator[Batch]:
  """Endless training batches {'image': (b, S, S, 3) f32, 'label': (b,) i32}, b = local batch.

  Epoch e is this process's shard shuffled with a seed drawn from (seed, e)
  (``shuffle_buffer`` 0: a buffer as large as the shard, a full permutation),
  cut to whole batches. ``start_step`` starts at that global step, as if the
  earlier batches had been drawn. ``cache`` keeps the (undecoded) shard in
  memory after the first epoch.
  """
  local = local_batch_size(batch_size, process_count)
  per_process = shard_size(split.num_examples, process_count)
  steps = per_process // local
  if steps == 0:
    raise ValueError(
      f'{split.name}: batch size {batch_size} is larger than the split '
      f'({split.num_examples} examples over {process_count} process(es))'
    )
  if start_step < 0:
    raise ValueError(f'start_step must be >= 0, got {start_step}')
  base = _shard(split, process_index, process_count)
  if cache:
    base = base.cache()
  buffer = shuffle_buffer or per_process + 1
  first_epoch, skip = divmod(start_step, steps)

  def epoch(e):
    ds = base.shuffle(buffer, seed=_scalar_seed(_seed_pair(seed, 0, e))).enumerate()
    # filter, not take/skip: the epoch reads the whole shard, so cache() completes.
    first = tf.where(e == first_epoch, tf.constant(skip * local, tf.int64), 0)
    ds = ds.filter(lambda p, ex: (p >= first) & (p < steps * local))
    return ds.map(lambda p, ex: (e, p, ex))

  def load(e, p, ex):
    image = image_fn(split.decode(ex['image']), _seed_pair(seed, 1, process_index, e, p))
    return {'image': image, 'label': tf.cast(ex['label'], tf.int32)}

  ds = tf.data.Dataset.counter(first_epoch).flat_map(epoch)
  ds = ds.map(load, num_parallel_calls=_AUTO).batch(local, drop_remainder=True)
  return _NamedErrors(ds.prefetch(_AUTO).as_numpy_iterator(), split)


def num_eval_batches(num_examples: int, batch_size: int, process_count: int = 1) -> int:
  """Batches every process yields in one evaluation pass (the same on all)."""
  local = local_batch_size(batch_size, process_count)
  return math.ceil(math.ceil(num_examples / process_count) / local)


def eval_batches(
  split: Split,
  *,
  batch_size: int,
  image_fn: EvalImageFn,
  image_size: int,
  process_index: int = 0,
  process_count: int = 1,
) -> Iterator[Batch]:
  """One in-order pass of this process's shard, {'image', 'label', 'mask'}.

  Padded to :func:`num_eval_batches` batches of ``batch_size // process_count``
  with zero images whose 'mask' is False; every real example appears exactly
  once over all processes with 'mask' True.
  """
  local = local_batch_size(batch_size, process_count)
  total = num_eval_batches(split.num_examples, batch_size, process_count) * local

  def load(ex):
    image = image_fn(split.decode(ex['image']))
    return {'image': image, 'label': tf.cast(ex['label'], tf.int32), 'mask': True}

  pad = tf.data.Dataset.from_tensors(
    {
      'image': tf.zeros([image_size, image_size, 3], tf.float32),
      'label': tf.constant(0, tf.int32),
      'mask': False,
    }
  ).repeat()
  ds = _shard(split, process_index, process_count).map(load, num_parallel_calls=_AUTO)
  ds = ds.concatenate(pad).take(total).batch(local)
  return _NamedErrors(ds.prefetch(_AUTO).as_numpy_iterator(), split)


def two_view_batches(
  split: Split,
  *,
  batch_size: int,
  image_size: int,
  mean: Sequence[float],
  std: Sequence[float],
  seed: int,
  process_index: int = 0,
  process_count: int = 1,
) -> Iterator[Batch]:
  """One shuffled pass of SupCon pairs {'image': (2b, S, S, 3), 'label': (b,)}.

  Rows [0, b) are the first views of the b images and rows [b, 2b) the second
  views in the same order (view-major, as ``torch.cat(torch.unbind(f, dim=1))``);
  the last incomplete batch is dropped (drop_last, as in the original).
  """
  local = local_batch_size(batch_size, process_count)
  per_process = shard_size(split.num_examples, process_count)
  if per_process < local:
    raise ValueError(
      f'{split.name}: selection batch size {batch_size} is larger than the split '
      f'({split.num_examples} examples over {process_count} process(es))'
    )
  ds = _shard(split, process_index, process_count)
  ds = ds.shuffle(per_process + 1, seed=_scalar_seed(_seed_pair(seed, 2)))
  ds = ds.take((per_process // local) * local).enumerate()

  def views(p, ex):
    image = tf.cast(split.decode(ex['image']), tf.float32) / 255.0
    example_seed = _seed_pair(seed, 3, process_index, p)
    fold_in = tf.random.experimental.stateless_fold_in
    pair = [supcon_augment(image, fold_in(example_seed, v), image_size) for v in (0, 1)]
    return _normalise(tf.stack(pair), mean, std), tf.cast(ex['label'], tf.int32)

  def view_major(pairs, label):  # (b, 2, S, S, 3) -> (2b, S, S, 3)
    image = tf.reshape(tf.transpose(pairs, [1, 0, 2, 3, 4]), [2 * local, image_size, image_size, 3])
    return {'image': image, 'label': label}

  ds = ds.map(views, num_parallel_calls=_AUTO).batch(local, drop_remainder=True)
  ds = ds.map(view_major, num_parallel_calls=_AUTO)
  return _NamedErrors(ds.prefetch(_AUTO).as_numpy_iterator(), split)
