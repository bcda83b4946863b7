"""Tests for gps_jax.data.input_pipeline: resume, epochs, multi-process sharding, recipes."""

import dataclasses
import functools

import numpy as np
import pytest
import tensorflow as tf  # Imported at collection so no test pays the import.

from gps_jax.data import input_pipeline as ip
from gps_jax.data.fgvc_augment import fgvc_eval_image
from gps_jax.data.pipeline import preprocess
from gps_jax.data.splits import memory_split

MEAN = (0.1, 0.2, 0.3)
STD = (0.5, 0.25, 2.0)
S = 8  # output side of every test image


def noise_images(n, h=16, w=16, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def id_images(n, h=8, w=8):
  """Constant images of value 10 * id, so a pixel names its example (n <= 26)."""
  return np.ascontiguousarray(
    np.broadcast_to((10 * np.arange(n, dtype=np.uint8))[:, None, None, None], (n, h, w, 3))
  )


def split_of(images, labels=None):
  labels = np.arange(len(images)) if labels is None else np.asarray(labels)
  return memory_split('test', images, labels, int(labels.max()) + 1)


def resize_fns(size=S):
  return ip.recipe_image_fns('resize', size, 0.0, 1.0)


def fgvc_fns(size=S, **kw):
  return ip.recipe_image_fns('fgvc', size, MEAN, STD, **kw)


def take(iterator, k):
  return [next(iterator) for _ in range(k)]


def labels_of(batches):
  return np.concatenate([b['label'] for b in batches])


def check_ids(batches):
  """Constant id images through the 'resize' recipe (mean 0, std 1): pixel = 10 * id / 255."""
  for b in batches:
    keep = b.get('mask', np.ones(len(b['label']), bool))
    want = 10 * b['label'][keep, None, None, None] / 255.0
    assert keep.any()
    np.testing.assert_allclose(b['image'][keep] - want, 0.0, atol=1e-6)


# ----------------------------------------------------------------------------- sizes


def test_batch_arithmetic():
  assert ip.local_batch_size(12, 3) == 4
  assert ip.steps_per_epoch(10, 4) == 2
  assert ip.steps_per_epoch(25, 6, 2) == 4  # shards of 12 and 13 -> 12 // 3
  assert ip.steps_per_epoch(25, 6, 3) == 4  # smallest shard 8 -> 8 // 2
  assert ip.num_eval_batches(12, 4) == 3
  assert ip.num_eval_batches(13, 4) == 4
  assert ip.num_eval_batches(11, 6, 2) == 2  # largest shard 6 -> 2 batches of 3
  assert ip.num_eval_batches(11, 6, 3) == 2  # largest shard 4 -> 2 batches of 2
  for bad in ((5, 2), (0, 1), (7, 3)):
    with pytest.raises(ValueError, match='multiple of the process count'):
      ip.local_batch_size(*bad)


# ----------------------------------------------------------------------------- resume

RESUME_N, RESUME_BATCH = 11, 4  # 2 steps per epoch, 3 examples left out each epoch


@functools.lru_cache(maxsize=None)
def uninterrupted(shuffle_buffer, k=8):
  train_fn, _ = fgvc_fns()
  split = split_of(noise_images(RESUME_N))
  it = ip.train_batches(
    split, batch_size=RESUME_BATCH, image_fn=train_fn, seed=3, shuffle_buffer=shuffle_buffer
  )
  return take(it, k)


@pytest.mark.parametrize(
  'start_step,shuffle_buffer',
  [(1, 0), (2, 0), (5, 0), (4, 3), (7, 3)],
  ids=['in-epoch-0', 'epoch-boundary', 'in-epoch-2', 'boundary-small-buffer', 'late-small-buffer'],
)
def test_resume_yields_the_same_batches_as_an_uninterrupted_run(start_step, shuffle_buffer):
  want = uninterrupted(shuffle_buffer)
  train_fn, _ = fgvc_fns()
  split = split_of(noise_images(RESUME_N))
  it = ip.train_batches(
    split,
    batch_size=RESUME_BATCH,
    image_fn=train_fn,
    seed=3,
    start_step=start_step,
    shuffle_buffer=shuffle_buffer,
  )
  got = take(it, len(want) - start_step)
  for step, (g, w) in enumerate(zip(got, want[start_step:]), start=start_step):
    np.testing.assert_array_equal(g['label'], w['label'], err_msg=f'step {step}')
    np.testing.assert_array_equal(g['image'], w['image'], err_msg=f'step {step}')
  # The reference itself is not trivially periodic, so a wrong offset would show.
  assert not np.array_equal(want[start_step]['label'], want[start_step - 1]['label'])


# ----------------------------------------------------------------------------- epochs


def epochs_of(seed, n=13, batch_size=4, num_epochs=4, shuffle_buffer=0):
  train_fn, _ = resize_fns()
  split = split_of(id_images(n))
  it = ip.train_batches(
    split, batch_size=batch_size, image_fn=train_fn, seed=seed, shuffle_buffer=shuffle_buffer
  )
  steps = ip.steps_per_epoch(n, batch_size)
  batches = take(it, steps * num_epochs)
  check_ids(batches)
  return labels_of(batches).reshape(num_epochs, steps * batch_size)


@pytest.mark.parametrize('shuffle_buffer', [0, 3])
def test_each_epoch_is_a_fresh_shuffle_without_repeats(shuffle_buffer):
  n = 13  # 3 steps of 4: 12 examples per epoch, one left out
  epochs = epochs_of(seed=0, shuffle_buffer=shuffle_buffer)
  assert epochs.shape == (4, 12)
  for e in epochs:
    assert len(set(e.tolist())) == 12  # no example twice in an epoch
    assert set(e.tolist()) <= set(range(n))
  orders = {tuple(e) for e in epochs}
  assert len(orders) == 4  # every epoch has its own order
  assert set(epochs.ravel().tolist()) == set(range(n))  # not always the same one left out
  again = epochs_of(seed=0, shuffle_buffer=shuffle_buffer)
  np.testing.assert_array_equal(epochs, again)
  other = epochs_of(seed=1, shuffle_buffer=shuffle_buffer)
  assert all(not np.array_equal(a, b) for a, b in zip(epochs, other))


def test_start_step_errors():
  train_fn, _ = resize_fns()
  with pytest.raises(ValueError, match='start_step must be >= 0'):
    ip.train_batches(split_of(id_images(8)), batch_size=4, image_fn=train_fn, seed=0, start_step=-1)


# ----------------------------------------------------------------------------- multi-process


@pytest.mark.parametrize('process_count', [2, 3])
def test_eval_shards_cover_the_split_exactly_once(process_count):
  n, batch_size = 11, 6
  _, eval_fn = resize_fns()
  split = split_of(id_images(n))
  local = batch_size // process_count
  seen, padding = [], 0
  for index in range(process_count):
    batches = list(
      ip.eval_batches(
        split,
        batch_size=batch_size,
        image_fn=eval_fn,
        image_size=S,
        process_index=index,
        process_count=process_count,
      )
    )
    assert len(batches) == ip.num_eval_batches(n, batch_size, process_count) == 2
    for b in batches:
      assert b['image'].shape == (local, S, S, 3) and b['label'].shape == (local,)
      np.testing.assert_array_equal(b['image'][~b['mask']], 0.0)
      padding += int((~b['mask']).sum())
    check_ids(batches)
    mask = np.concatenate([b['mask'] for b in batches])
    assert mask[: mask.sum()].all()  # real examples first, then padding
    seen.append(labels_of(batches)[mask])
  every = np.concatenate(seen)
  np.testing.assert_array_equal(np.sort(every), np.arange(n))  # each exactly once
  assert padding == process_count * 2 * local - n


@pytest.mark.parametrize('process_count', [2, 3])
def test_train_shards_are_disjoint_per_epoch(process_count):
  n, batch_size = 25, 6
  train_fn, _ = resize_fns()
  split = split_of(id_images(n))
  local = batch_size // process_count
  steps = ip.steps_per_epoch(n, batch_size, process_count)
  per_process = []
  for index in range(process_count):
    it = ip.train_batches(
      split,
      batch_size=batch_size,
      image_fn=train_fn,
      seed=5,
      process_index=index,
      process_count=process_count,
    )
    batches = take(it, 2 * steps)  # two epochs
    assert all(b['image'].shape == (local, S, S, 3) for b in batches)
    assert all(b['label'].shape == (local,) for b in batches)
    check_ids(batches)
    epochs = labels_of(batches).reshape(2, steps * local)
    for e in epochs:
      assert len(set(e.tolist())) == steps * local
    per_process.append(epochs)
  for e in range(2):
    union = np.concatenate([p[e] for p in per_process])
    assert len(set(union.tolist())) == steps * batch_size  # disjoint across processes
  # Process-major, the slices are exactly the single-process global batches.
  single = take(
    ip.train_batches(split, batch_size=batch_size, image_fn=train_fn, seed=5), 2 * steps
  )
  for e in range(2):
    for t in range(steps):
      step = e * steps + t
      glued = np.concatenate([p[e][t * local : (t + 1) * local] for p in per_process])
      np.testing.assert_array_equal(glued, single[step]['label'])


@pytest.mark.parametrize('process_count', [2, 3])
def test_two_view_shards_are_disjoint(process_count):
  n, batch_size = 25, 6
  split = split_of(noise_images(n, 12, 12))
  local = batch_size // process_count
  seen = []
  for index in range(process_count):
    batches = list(
      ip.two_view_batches(
        split,
        batch_size=batch_size,
        image_size=S,
        mean=MEAN,
        std=STD,
        seed=2,
        process_index=index,
        process_count=process_count,
      )
    )
    assert len(batches) == (n // process_count) // local
    for b in batches:
      assert b['image'].shape == (2 * local, S, S, 3) and b['label'].shape == (local,)
    seen.append(labels_of(batches))
  every = np.concatenate(seen)
  assert len(set(every.tolist())) == len(every) == sum(map(len, seen))
  assert len(every) == ip.steps_per_epoch(n, batch_size, process_count) * batch_size


def test_batch_size_must_divide_by_the_process_count():
  split = split_of(id_images(12))
  train_fn, eval_fn = resize_fns()
  kw = dict(batch_size=5, process_index=0, process_count=2)
  with pytest.raises(ValueError, match='batch size 5 must be a positive multiple'):
    ip.train_batches(split, image_fn=train_fn, seed=0, **kw)
  with pytest.raises(ValueError, match='batch size 5 must be a positive multiple'):
    ip.eval_batches(split, image_fn=eval_fn, image_size=S, **kw)
  with pytest.raises(ValueError, match='batch size 5 must be a positive multiple'):
    ip.two_view_batches(split, image_size=S, mean=MEAN, std=STD, seed=0, **kw)
  with pytest.raises(ValueError, match=r'process_index 2 not in \[0, 2\)'):
    ip.eval_batches(
      split, batch_size=4, image_fn=eval_fn, image_size=S, process_index=2, process_count=2
    )


# ----------------------------------------------------------------------------- recipes


def test_fgvc_train_recipe_shape_and_determinism():
  train_fn, _ = fgvc_fns()
  image = tf.constant(noise_images(1, 16, 24)[0])
  seed = tf.constant([4, 5], tf.int64)
  out = train_fn(image, seed).numpy()
  assert out.shape == (S, S, 3) and out.dtype == np.float32
  np.testing.assert_array_equal(out, train_fn(image, seed).numpy())
  assert not np.allclose(out, train_fn(image, tf.constant([4, 6], tf.int64)).numpy())
  # Normalised [0, 1] pixels: within [(0 - mean) / std, (1 - mean) / std].
  lo, hi = -np.array(MEAN) / STD, (1 - np.array(MEAN)) / STD
  assert np.all(out >= lo - 1e-6) and np.all(out <= hi + 1e-6)
  # A constant image stays constant through crop and flip: ((0.2, 0.4, 0.6) - mean) / std.
  flat = tf.constant(np.broadcast_to(np.uint8([51, 102, 153]), (16, 24, 3)))
  np.testing.assert_allclose(
    train_fn(flat, seed), np.broadcast_to([0.2, 0.8, 0.15], out.shape), atol=1e-5
  )


def test_fgvc_train_recipe_through_the_pipeline_depends_on_the_seed():
  train_fn, _ = fgvc_fns()
  split = split_of(noise_images(8))

  def first(seed):
    return next(ip.train_batches(split, batch_size=8, image_fn=train_fn, seed=seed))

  a, b, c = first(0), first(0), first(1)
  assert a['image'].shape == (8, S, S, 3) and a['image'].dtype == np.float32
  np.testing.assert_array_equal(a['image'], b['image'])
  np.testing.assert_array_equal(a['label'], b['label'])
  order = np.argsort(a['label']), np.argsort(c['label'])
  assert not np.allclose(a['image'][order[0]], c['image'][order[1]])


@pytest.mark.parametrize('resize_size', [None, 12])
def test_fgvc_eval_recipe_is_normalised_fgvc_eval_image(resize_size):
  _, eval_fn = fgvc_fns(resize_size=resize_size)
  images = noise_images(3, 16, 24)
  (batch,) = ip.eval_batches(split_of(images), batch_size=3, image_fn=eval_fn, image_size=S)
  resize = resize_size or 9  # round(8 / 0.9)
  for i, image in enumerate(images):
    want = (fgvc_eval_image(tf.constant(image), S, resize).numpy() - MEAN) / STD
    np.testing.assert_allclose(batch['image'][i], want, atol=1e-5)
  np.testing.assert_array_equal(batch['label'], [0, 1, 2])


def test_fgvc_eval_resize_size_matters():
  images = noise_images(1, 16, 24)
  outs = [fgvc_fns(resize_size=r)[1](tf.constant(images[0])).numpy() for r in (None, 16)]
  assert not np.allclose(*outs)


def test_resize_recipe_is_preprocess():
  images = noise_images(4, 16, 12)
  train_fn, eval_fn = ip.recipe_image_fns('resize', S, MEAN, STD)
  want = preprocess(images, S, MEAN, STD).numpy()
  (batch,) = ip.eval_batches(split_of(images), batch_size=4, image_fn=eval_fn, image_size=S)
  np.testing.assert_allclose(batch['image'], want, atol=1e-6)
  train = next(ip.train_batches(split_of(images), batch_size=4, image_fn=train_fn, seed=0))
  np.testing.assert_allclose(train['image'], want[train['label']], atol=1e-6)  # no augmentation


def test_unknown_recipe():
  with pytest.raises(ValueError, match=r"recipe='bogus'.*resize, fgvc"):
    ip.recipe_image_fns('bogus', S, MEAN, STD)


# ----------------------------------------------------------------------------- augmentation seeds


def test_augmentation_differs_per_example_and_per_epoch():
  image = noise_images(1, 32, 32)[0]
  images = np.stack([image, image, *noise_images(2, 32, 32, seed=1)])  # examples 0 and 1 equal
  train_fn, _ = fgvc_fns()
  it = ip.train_batches(split_of(images), batch_size=4, image_fn=train_fn, seed=0)
  epochs = [next(it) for _ in range(3)]  # one batch per epoch
  by_label = [{int(k): img for k, img in zip(b['label'], b['image'])} for b in epochs]
  for e in by_label:
    assert not np.allclose(e[0], e[1])  # same pixels, different crops
  for k in range(4):
    assert not np.allclose(by_label[0][k], by_label[1][k])  # same example, other epoch
    assert not np.allclose(by_label[1][k], by_label[2][k])


def test_two_view_seeds_differ_per_example():
  image = noise_images(1, 16, 16)[0]
  split = split_of(np.stack([image] * 4))
  (batch,) = ip.two_view_batches(split, batch_size=4, image_size=S, mean=MEAN, std=STD, seed=0)
  views = batch['image'].reshape(8, -1)
  assert len({v.tobytes() for v in views}) == 8  # four equal images, eight different views


# ----------------------------------------------------------------------------- caching


def counted(split, reads):
  """The split with every read of an example from its source recorded in ``reads``."""

  def record(label):
    reads.append(int(label))
    return label

  def read(ex):
    label = tf.py_function(record, [ex['label']], tf.int64)
    label.set_shape([])
    return {'image': ex['image'], 'label': label}

  return dataclasses.replace(split, dataset=split.dataset.map(read))


def reads_after(n, batch_size, epochs, **kw):
  reads = []
  train_fn, _ = resize_fns()
  split = counted(split_of(id_images(n)), reads)
  it = ip.train_batches(split, batch_size=batch_size, image_fn=train_fn, seed=0, **kw)
  batches = take(it, ip.steps_per_epoch(n, batch_size) * epochs)
  check_ids(batches)
  return reads


def test_cache_reads_the_source_once():
  reads = reads_after(11, 4, epochs=4)
  assert sorted(reads) == list(range(11))
  uncached = reads_after(11, 4, epochs=4, cache=False)
  assert len(uncached) >= 4 * 11  # the counter does count: every epoch reads it all


def test_cache_reads_the_source_once_with_a_small_shuffle_buffer():
  reads = reads_after(11, 4, epochs=4, shuffle_buffer=2)
  assert sorted(reads) == list(range(11))


@pytest.mark.xfail(
  reason='documented limitation (input_pipeline docstring): Dataset.shuffle(seed=...) mixes '
  'in the TF global seed, so the order depends on tf.random.set_seed too; gps_jax never sets it',
  strict=True,
)
def test_order_depends_only_on_the_seed_argument():
  before = epochs_of(seed=0, num_epochs=2)
  tf.random.set_seed(1234)
  try:
    after = epochs_of(seed=0, num_epochs=2)
  finally:
    tf.random.set_seed(None)
  np.testing.assert_array_equal(before, after)
