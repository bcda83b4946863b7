"""Multi-process input: the per-process batch, step and eval-batch arithmetic, and the shards
of eval, train and two-view batches — every eval example exactly once with padding last,
train and two-view examples disjoint across processes, the train slices glued back into the
single-process batches — and the errors for a batch size or process index that does not fit."""

import numpy as np
import pytest
from pipeline_refs import (
  MEAN,
  STD,
  S,
  check_ids,
  id_images,
  labels_of,
  noise_images,
  resize_fns,
  split_of,
  take,
)

from gps_jax.data import input_pipeline as ip


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
