"""tf.data input for the jitted steps, over any :class:`gps_jax.data.splits.Split`.

Four iterators, all yielding numpy dicts:

* :func:`train_batches`: endless shuffled batches for fine-tuning;
* :func:`one_pass_batches`: its first epoch, the selection pass of a task-loss score;
* :func:`eval_batches`: one in-order pass with a padding 'mask';
* :func:`two_view_batches`: one shuffled pass of SupCon view pairs for selection.

'label' is an int32 class per example, or, for a segmentation split (one with
``Split.decode_label``), a uint8 (label_size, label_size) mask of 0 / 1: the
decoded mask resized nearest-neighbour (``tf.image.resize``, half-pixel
centres) to the ``label_size`` the caller passes (config.model.image_size).
That resize equals PIL's NEAREST (what :func:`gps_jax.data.kvasir.load_pair`
uses) whenever the scale (file side / label_size) is a dyadic fraction, e.g.
for every label_size that is a power of two; otherwise it may pick the next
source row or column where a sample point falls exactly on a pixel boundary
(PIL accumulates the inexact double scale and lands just below it).

Determinism: every random choice is derived from the ``seed`` argument (epoch
e is shuffled with a seed drawn from (seed, e); the augmentation of the example
at global position p of epoch e uses a stateless seed drawn from (seed, e, p)
and nothing else),
so the same seed gives the same batches, and a run can restart at any step
without replaying earlier epochs (``start_step``). ``Dataset.shuffle`` also
mixes in TensorFlow's global seed: gps_jax never sets it, and a caller that
calls ``tf.random.set_seed`` changes the order (augmentations are unaffected).

Multi-host: every process orders the split the same way (the seeds do not
depend on the process) and keeps, of each global batch, its own slice of
``batch_size // process_count`` examples: process p takes the positions
[p * b, (p + 1) * b) of every global batch of B = P * b. Only those are decoded
and augmented. The global batch, laid out process-major (as
``jax.make_array_from_process_local_data`` assembles it), is therefore exactly
the batch a single process would make, augmentations included: a run gives the
same selection and training on 1 process or P. Evaluation pads the split to
whole global batches with masked entries, so every process yields the same
number of batches and every example counts once.

Image functions map a uint8 (H, W, 3) image to normalised float32 (S, S, 3):
``recipe_image_fns(recipe, ...)`` gives the train and eval functions of a
recipe: ``'resize'`` (VTAB-1k and the demo: resize to S, no augmentation) or
``'fgvc'`` (random resized crop + flip for train, resize 248 + centre crop S
for eval). Each resize's interpolation is a choice (``train_interpolation``,
``eval_interpolation``, and ``interpolation`` of the SupCon views): 'bilinear'
(default), 'bicubic' (PIL's) or, with a seed, 'random' (bilinear or bicubic per
image, drawn from the image's augmentation seed, so determinism and resuming hold).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import tensorflow as tf

from gps_jax.data.augment import check_interpolation, hide_gpus_from_tf, supcon_augment
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
# Folded into the augmentation seeds before the position. Seeds once also folded the
# process index here; positions are global now, and this constant (the old value in a
# single-process run) keeps every seed, and so every result, of single-process runs.
_GLOBAL = 0


def _normalise(x: tf.Tensor, mean, std) -> tf.Tensor:
  return (x - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def recipe_image_fns(
  recipe: str,
  image_size: int,
  mean: Sequence[float],
  std: Sequence[float],
  *,
  resize_size: int | None = None,
  train_interpolation: str = 'bilinear',
  eval_interpolation: str = 'bilinear',
) -> tuple[TrainImageFn, EvalImageFn]:
  """(train_fn(image, seed), eval_fn(image)) of a recipe; see the module docstring.

  ``train_interpolation`` ('bilinear' | 'bicubic' | 'random', drawn per image from
  the train seed) and ``eval_interpolation`` ('bilinear' | 'bicubic') choose the
  resizes (config.data.train_interpolation / eval_interpolation).
  """
  check_interpolation(train_interpolation, key='data.train_interpolation')
  check_interpolation(eval_interpolation, allow_random=False, key='data.eval_interpolation')
  if recipe == 'resize':

    def train_fn(image, seed):
      return preprocess(image, image_size, mean, std, train_interpolation, seed)

    def eval_fn(image):
      return preprocess(image, image_size, mean, std, eval_interpolation)

  elif recipe == 'fgvc':
    resize = resize_size or round(image_size / 0.9)  # 248 for 224 (timm crop_pct 0.9).

    def train_fn(image, seed):
      return _normalise(fgvc_train_image(image, seed, image_size, train_interpolation), mean, std)

    def eval_fn(image):
      return _normalise(fgvc_eval_image(image, image_size, resize, eval_interpolation), mean, std)

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


def steps_per_epoch(num_examples: int, batch_size: int, process_count: int = 1) -> int:
  """Full global batches per epoch (the incomplete last one is dropped)."""
  local_batch_size(batch_size, process_count)  # validates the division
  return num_examples // batch_size


def _check_process(process_index: int, process_count: int) -> None:
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} not in [0, {process_count})')


def _mine(position, batch_size: int, local: int, process_index: int):
  """Whether global position `position` falls in this process's slice of its batch."""
  return (position % batch_size) // local == process_index


def _seed_pair(seed: int, *ints) -> tf.Tensor:
  """A stateless (2,) int64 seed from `seed` folded with each of `ints` (tensors ok)."""
  s = tf.constant([seed, 0], tf.int64)
  for i in ints:
    s = tf.random.experimental.stateless_fold_in(s, tf.cast(i, tf.int64))
  return s


def _scalar_seed(pair: tf.Tensor) -> tf.Tensor:
  """A non-negative int64 scalar (for Dataset.shuffle) drawn from a (2,) seed."""
  return tf.random.stateless_uniform([], pair, minval=0, maxval=_MAX_SEED, dtype=tf.int64)


def _check_label_size(split: Split, label_size: int) -> None:
  if split.decode_label is not None and label_size < 1:
    raise ValueError(
      f'{split.name}: a segmentation split needs label_size (the mask side, '
      f'config.model.image_size), got label_size={label_size}'
    )


def _label(split: Split, ex: dict, label_size: int) -> tf.Tensor:
  """int32 class, or for a segmentation split the uint8 (label_size, label_size) mask."""
  if split.decode_label is None:
    return tf.cast(ex['label'], tf.int32)
  _check_label_size(split, label_size)
  mask = split.decode_label(ex['label'])[..., None]
  mask = tf.image.resize(mask, [label_size, label_size], method='nearest')
  return tf.reshape(tf.cast(mask, tf.uint8), [label_size, label_size])


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
  label_size: int = 0,
) -> Iterator[Batch]:
  """Endless training batches {'image': (b, S, S, 3) f32, 'label': (b,) i32}, b = local batch.

  Epoch e is the split shuffled with a seed drawn from (seed, e) (``shuffle_buffer``
  0: a buffer as large as the split, a full permutation), cut to whole global
  batches, of which this process keeps its slice. ``start_step`` starts at that
  global step, as if the earlier batches had been drawn. ``cache`` keeps the
  (undecoded) split in memory after the first epoch. For a segmentation split
  'label' is (b, label_size, label_size) uint8 masks of 0 / 1 (label_size required).
  """
  local = local_batch_size(batch_size, process_count)
  _check_process(process_index, process_count)
  _check_label_size(split, label_size)
  steps = steps_per_epoch(split.num_examples, batch_size, process_count)
  if steps == 0:
    raise ValueError(
      f'{split.name}: batch size {batch_size} is larger than the split '
      f'({split.num_examples} examples)'
    )
  if start_step < 0:
    raise ValueError(f'start_step must be >= 0, got {start_step}')
  base = split.dataset.cache() if cache else split.dataset
  buffer = shuffle_buffer or split.num_examples + 1
  first_epoch, skip = divmod(start_step, steps)

  def epoch(e):
    ds = base.shuffle(buffer, seed=_scalar_seed(_seed_pair(seed, 0, e))).enumerate()
    # filter, not take/skip: the epoch reads the whole split, so cache() completes.
    first = tf.where(e == first_epoch, tf.constant(skip * batch_size, tf.int64), 0)
    ds = ds.filter(
      lambda q, ex: (
        (q >= first) & (q < steps * batch_size) & _mine(q, batch_size, local, process_index)
      )
    )
    return ds.map(lambda q, ex: (e, q, ex))

  def load(e, q, ex):
    image = image_fn(split.decode(ex['image']), _seed_pair(seed, 1, _GLOBAL, e, q))
    return {'image': image, 'label': _label(split, ex, label_size)}

  ds = tf.data.Dataset.counter(first_epoch).flat_map(epoch)
  ds = ds.map(load, num_parallel_calls=_AUTO).batch(local, drop_remainder=True)
  return _NamedErrors(ds.prefetch(_AUTO).as_numpy_iterator(), split)


def one_pass_batches(
  split: Split,
  *,
  batch_size: int,
  image_fn: TrainImageFn,
  seed: int,
  label_size: int = 0,
  process_index: int = 0,
  process_count: int = 1,
) -> Iterator[Batch]:
  """One shuffled pass of training batches (the last incomplete global batch dropped).

  The selection pass of a task-loss score: exactly the first
  :func:`steps_per_epoch` batches of :func:`train_batches` with the same
  arguments (same order, same augmentation seeds), without caching the split.
  """
  batches = train_batches(
    split,
    batch_size=batch_size,
    image_fn=image_fn,
    seed=seed,
    process_index=process_index,
    process_count=process_count,
    cache=False,
    label_size=label_size,
  )
  return itertools.islice(batches, steps_per_epoch(split.num_examples, batch_size, process_count))


def num_eval_batches(num_examples: int, batch_size: int, process_count: int = 1) -> int:
  """Batches every process yields in one evaluation pass (the same on all)."""
  local_batch_size(batch_size, process_count)  # validates the division
  return math.ceil(num_examples / batch_size)


def eval_batches(
  split: Split,
  *,
  batch_size: int,
  image_fn: EvalImageFn,
  image_size: int,
  process_index: int = 0,
  process_count: int = 1,
  label_size: int = 0,
) -> Iterator[Batch]:
  """One in-order pass, {'image', 'label', 'mask'}: this process's slice of each batch.

  The split is padded to :func:`num_eval_batches` global batches with zero
  images whose 'mask' is False; every real example appears exactly once over
  all processes with 'mask' True. For a segmentation split 'label' is
  (b, label_size, label_size) uint8 masks of 0 / 1, zeros for the padding.
  """
  local = local_batch_size(batch_size, process_count)
  _check_process(process_index, process_count)
  _check_label_size(split, label_size)
  total = num_eval_batches(split.num_examples, batch_size, process_count) * batch_size

  def load(ex):
    image = image_fn(split.decode(ex['image']))
    return {'image': image, 'label': _label(split, ex, label_size), 'mask': True}

  if split.decode_label is None:
    pad_label = tf.constant(0, tf.int32)
  else:
    pad_label = tf.zeros([label_size, label_size], tf.uint8)
  pad = tf.data.Dataset.from_tensors(
    {
      'image': tf.zeros([image_size, image_size, 3], tf.float32),
      'label': pad_label,
      'mask': False,
    }
  ).repeat()
  ds = split.dataset.enumerate().filter(lambda q, ex: _mine(q, batch_size, local, process_index))
  ds = ds.map(lambda q, ex: load(ex), num_parallel_calls=_AUTO)
  # This process's share of the padding: its slice of the padded tail.
  mine = sum(
    1 for q in range(split.num_examples, total) if (q % batch_size) // local == process_index
  )
  ds = ds.concatenate(pad.take(mine)).batch(local)
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
  interpolation: str = 'bilinear',
) -> Iterator[Batch]:
  """One shuffled pass of SupCon pairs {'image': (2b, S, S, 3), 'label': (b,)}.

  ``interpolation`` is the views' crop resize (config.data.select_interpolation):
  'bilinear' | 'bicubic' | 'random' (drawn per view from the view's seed).

  Rows [0, b) are the first views of this process's b images and rows [b, 2b)
  the second views in the same order (view-major, as
  ``torch.cat(torch.unbind(f, dim=1))``); a global batch is P such blocks, which
  the score step unfolds. The last incomplete global batch is dropped (drop_last,
  as in the original).
  """
  check_interpolation(interpolation, key='data.select_interpolation')
  if split.decode_label is not None:
    raise ValueError(
      f'two-view SupCon batches need class labels; a segmentation split ({split.name}) '
      'selects with config.gps.score=task_loss'
    )
  local = local_batch_size(batch_size, process_count)
  _check_process(process_index, process_count)
  steps = steps_per_epoch(split.num_examples, batch_size, process_count)
  if steps == 0:
    raise ValueError(
      f'{split.name}: selection batch size {batch_size} is larger than the split '
      f'({split.num_examples} examples)'
    )
  ds = split.dataset.shuffle(split.num_examples + 1, seed=_scalar_seed(_seed_pair(seed, 2)))
  ds = ds.enumerate().filter(
    lambda q, ex: (q < steps * batch_size) & _mine(q, batch_size, local, process_index)
  )

  def views(p, ex):
    image = tf.cast(split.decode(ex['image']), tf.float32) / 255.0
    example_seed = _seed_pair(seed, 3, _GLOBAL, p)
    fold_in = tf.random.experimental.stateless_fold_in
    pair = [
      supcon_augment(image, fold_in(example_seed, v), image_size, interpolation) for v in (0, 1)
    ]
    return _normalise(tf.stack(pair), mean, std), tf.cast(ex['label'], tf.int32)

  def view_major(pairs, label):  # (b, 2, S, S, 3) -> (2b, S, S, 3)
    image = tf.reshape(tf.transpose(pairs, [1, 0, 2, 3, 4]), [2 * local, image_size, image_size, 3])
    return {'image': image, 'label': label}

  ds = ds.map(views, num_parallel_calls=_AUTO).batch(local, drop_remainder=True)
  ds = ds.map(view_major, num_parallel_calls=_AUTO)
  return _NamedErrors(ds.prefetch(_AUTO).as_numpy_iterator(), split)
