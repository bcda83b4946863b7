"""The order of train_batches: a run resumed at any step yields the same batches as an
uninterrupted one; each epoch is a fresh shuffle without repeats, fixed by the seed; the
cache reads the source once. A known limitation (the TF global seed) is a strict xfail."""

import dataclasses
import functools

import numpy as np
import pytest
import tensorflow as tf  # Imported at collection so no test pays the import.
from pipeline_refs import (
  check_ids,
  fgvc_fns,
  id_images,
  labels_of,
  noise_images,
  resize_fns,
  split_of,
  take,
)

from gps_jax.data import input_pipeline as ip


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
