"""End-to-end tests of gps_jax.data.splits (sources 'vtab' and 'tfds') through the input pipeline.

No prepared TFDS data exists offline: the builders are mocked (tests/tfds_mock.py), with real
metadata and exactly as many examples per split as it says. Every VTAB-1k task and TFDS set:
its roles, counts, labels and decoded images, its batches, and the TFDS version warnings.
"""

import json
import logging
import math
import os

import numpy as np
import pytest
import tensorflow as tf  # Imported at collection so no test pays the import.
import tensorflow_datasets as tfds
from tfds_mock import (
  BATCH,
  MEAN,
  SIZE,
  SPLIT_SIZES,
  STD,
  TEST,
  TFDS_COUNTS,
  VTAB_TEST_SIZES,
  data_config,
  mock_as_dataset,
  write_metadata,
)

from gps_jax.data import splits, vtab
from gps_jax.data.input_pipeline import (
  eval_batches,
  recipe_image_fns,
  train_batches,
  two_view_batches,
)


@pytest.fixture(scope='module')
def mock_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds_metadata'))
  for name, sizes in SPLIT_SIZES.items():
    write_metadata(name, sizes, data_dir)
  return data_dir


@pytest.fixture
def mocked(mock_dir):
  """mock_data over the metadata in mock_dir; yields that data_dir."""
  with tfds.testing.mock_data(
    policy=tfds.testing.MockPolicy.USE_FILES, data_dir=mock_dir, as_dataset_fn=mock_as_dataset
  ):
    yield mock_dir


def labels_of(split):
  """The labels the split's dataset actually yields (also counts its examples)."""
  labels = split.dataset.map(lambda ex: ex['label']).as_numpy_iterator()
  return np.fromiter(labels, np.int64)


def count_and_label_range(split):
  """(examples, smallest label, largest label) of what the dataset yields, counted in graph."""
  big = np.iinfo(np.int64).max
  init = (np.int64(0), np.int64(big), np.int64(-big))

  def step(state, ex):
    n, lo, hi = state
    return n + 1, tf.minimum(lo, ex['label']), tf.maximum(hi, ex['label'])

  return tuple(int(x) for x in split.dataset.reduce(init, step))


def check_labels(labels, num_classes):
  assert labels.dtype == np.int64
  assert labels.size and labels.min() >= 0 and labels.max() < num_classes


# ----------------------------------------------------------------------------- VTAB-1k


def test_split_sizes_cover_every_builder():
  names = {spec.tfds_name for spec in vtab.TASKS.values()}
  names |= {s.tfds_name for s in splits.TFDS_SETS.values()}
  assert names == set(SPLIT_SIZES)


@pytest.mark.parametrize('task', list(vtab.TASKS))
def test_vtab_roles_counts_and_labels(mocked, task, caplog):
  spec = vtab.TASKS[task]
  data = data_config('vtab', task, mocked)
  assert splits.num_classes(data) == spec.num_classes
  test_size = VTAB_TEST_SIZES.get(task, TEST)
  expected = {'train': 800, 'val': 200, 'trainval': 1000, 'test': test_size}
  names = {
    'train': spec.train_split,
    'val': spec.val_split,
    'trainval': spec.trainval_split,
    'test': spec.test_split,
  }
  opened = {}
  with caplog.at_level(logging.WARNING, logger=splits.__name__):
    for role in splits.ROLES:
      split = splits.open_split(data, role)
      opened[role] = split
      assert split.name == f'{task}:{names[role]}'
      assert split.num_classes == spec.num_classes
      assert split.num_examples == expected[role]
      count, low, high = count_and_label_range(split)
      assert count == split.num_examples
      assert 0 <= low <= high < spec.num_classes
    for alias, role in (('train800', 'train'), ('val200', 'val'), ('train800val200', 'trainval')):
      split = splits.open_split(data, alias)
      assert (split.name, split.num_examples) == (opened[role].name, opened[role].num_examples)
  # The version warning comes exactly when the (current TFDS) builder is not the pinned one.
  version = str(tfds.builder(spec.tfds_name, data_dir=mocked).info.version)
  warnings = [r.getMessage() for r in caplog.records if r.name == splits.__name__]
  if version == spec.version:
    assert not warnings
  else:
    assert warnings and all(spec.version in w and version in w for w in warnings)

  # Decoded images: uint8 RGB whatever the source channels; dsprites' {0, 1} scaled to 255.
  split = opened['train']
  images = split.dataset.take(2).map(lambda ex: split.decode(ex['image']))
  for image in images.as_numpy_iterator():
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3
    if task.startswith('dsprites'):
      assert set(np.unique(image)) <= {0, 255}
    if spec.grayscale:
      np.testing.assert_array_equal(image[..., 0], image[..., 2])


@pytest.mark.slow
@pytest.mark.parametrize('task', list(vtab.TASKS))
def test_vtab_pipeline(mocked, task):
  """Selection, training and evaluation batches of the task's splits.

  Selection and training read val200 here, not train800: the same code, and a
  quarter of the examples to fill the full-split shuffle buffers with (the
  unmarked test below runs them on train800).
  """
  spec = vtab.TASKS[task]
  data = data_config('vtab', task, mocked)
  train = splits.open_split(data, 'val')
  test = splits.open_split(data, 'test')
  check_pipeline(train, test, spec.num_classes)


def check_pipeline(train, test, num_classes):
  views = two_view_batches(train, batch_size=BATCH, image_size=SIZE, mean=MEAN, std=STD, seed=0)
  for _ in range(2):
    batch = next(views)
    assert batch['image'].shape == (2 * BATCH, SIZE, SIZE, 3)
    assert batch['image'].dtype == np.float32 and np.isfinite(batch['image']).all()
    assert batch['label'].shape == (BATCH,) and batch['label'].dtype == np.int32
    check_labels(batch['label'].astype(np.int64), num_classes)

  train_fn, eval_fn = recipe_image_fns('resize', SIZE, MEAN, STD)
  batches = train_batches(train, batch_size=BATCH, image_fn=train_fn, seed=0)
  for _ in range(3):
    batch = next(batches)
    assert set(batch) == {'image', 'label'}
    assert batch['image'].shape == (BATCH, SIZE, SIZE, 3) and batch['image'].dtype == np.float32
    assert np.abs(batch['image']).max() <= 1.0 + 1e-5  # Normalised with mean = std = 0.5.
    assert batch['label'].shape == (BATCH,) and batch['label'].dtype == np.int32
    check_labels(batch['label'].astype(np.int64), num_classes)

  evaluated = list(eval_batches(test, batch_size=BATCH, image_fn=eval_fn, image_size=SIZE))
  assert len(evaluated) == math.ceil(test.num_examples / BATCH)
  for batch in evaluated:
    assert batch['image'].shape == (BATCH, SIZE, SIZE, 3) and batch['image'].dtype == np.float32
    assert batch['label'].dtype == np.int32 and batch['mask'].dtype == bool
  mask = np.concatenate([b['mask'] for b in evaluated])
  labels = np.concatenate([b['label'] for b in evaluated])
  assert mask.sum() == test.num_examples and mask[: test.num_examples].all()
  check_labels(labels[mask].astype(np.int64), num_classes)
  np.testing.assert_array_equal(labels[mask], labels_of(test))


def test_vtab_pipeline_one_task(mocked):
  """The cheap, unmarked pipeline check: a single-channel task (smallnorb_elevation)."""
  data = data_config('vtab', 'smallnorb_elevation', mocked)
  train = splits.open_split(data, 'train800')
  test = splits.open_split(data, 'test')
  check_pipeline(train, test, 9)


# ----------------------------------------------------------------------------- TFDS sets


@pytest.mark.parametrize('name', list(splits.TFDS_SETS))
def test_tfds_roles_counts_and_labels(mocked, name):
  tfds_set = splits.TFDS_SETS[name]
  data = data_config('tfds', name, mocked)
  assert splits.num_classes(data) == tfds_set.num_classes
  counts = {}
  for role in splits.ROLES:
    split = splits.open_split(data, role)
    assert split.name == f'{name}:{tfds_set.splits[role]}'
    assert split.num_classes == tfds_set.num_classes
    counts[role] = split.num_examples
    if split.num_examples <= 2000:  # cifar100 train and trainval: see the next test.
      count, low, high = count_and_label_range(split)
      assert count == split.num_examples
      assert 0 <= low <= high < tfds_set.num_classes
  assert counts == TFDS_COUNTS[name]
  assert counts['train'] + counts['val'] == counts['trainval']
  if tfds_set.splits['val'] == 'train[90%:]':  # Held-out sets: val is 10 % of train.
    assert counts['val'] == round(0.1 * counts['trainval'])
  with pytest.raises(ValueError, match='train800'):  # VTAB-only aliases.
    splits.open_split(data, 'train800')


@pytest.mark.slow
def test_tfds_cifar100_large_splits_yield_their_count(mocked):
  data = data_config('tfds', 'cifar100', mocked)
  for role in ('train', 'trainval'):
    split = splits.open_split(data, role)
    count, low, high = count_and_label_range(split)
    assert count == split.num_examples == TFDS_COUNTS['cifar100'][role]
    assert 0 <= low <= high < 100


def test_tfds_pipeline_one_set(mocked):
  data = data_config('tfds', 'stanford_cars', mocked)
  check_pipeline(splits.open_split(data, 'train'), splits.open_split(data, 'test'), 196)


# ----------------------------------------------------------------------------- versions


def test_version_mismatch_warns_with_both_versions(mocked, caplog):
  """caltech101: current TFDS builds 3.0.2, VPT (and vtab.TASKS) pin 3.0.1."""
  version = str(tfds.builder('caltech101', data_dir=mocked).info.version)
  assert version != '3.0.1', 'TFDS now builds the pinned caltech101 version: pick another task'
  with caplog.at_level(logging.WARNING, logger=splits.__name__):
    split = splits.open_split(data_config('vtab', 'caltech101', mocked), 'test')
  assert split.num_examples == TEST
  records = [r for r in caplog.records if r.name == splits.__name__]
  assert len(records) == 1 and records[0].levelno == logging.WARNING
  message = records[0].getMessage()
  assert 'caltech101' in message and '3.0.1' in message and version in message


def write_metadata_at_version(tfds_name, sizes, data_dir, version):
  """Metadata as if `version` (not the installed builder's own) had been prepared."""
  write_metadata(tfds_name, sizes, data_dir)
  default_dir = tfds.builder(tfds_name, data_dir=data_dir).data_dir
  version_dir = os.path.join(os.path.dirname(default_dir), version)
  os.rename(default_dir, version_dir)
  path = os.path.join(version_dir, 'dataset_info.json')
  with open(path) as f:
    info = json.load(f)
  info['version'] = version
  with open(path, 'w') as f:
    json.dump(info, f)


def test_data_prepared_at_the_pinned_version_is_used(tmp_path, caplog):
  data_dir = str(tmp_path)
  write_metadata_at_version('caltech101', SPLIT_SIZES['caltech101'], data_dir, '3.0.1')
  assert tfds.builder('caltech101:3.0.1', data_dir=data_dir).is_prepared()
  assert not tfds.builder('caltech101', data_dir=data_dir).is_prepared()  # 3.0.2
  data = data_config('vtab', 'caltech101', data_dir)
  with tfds.testing.mock_data(
    policy=tfds.testing.MockPolicy.USE_FILES, data_dir=data_dir, as_dataset_fn=mock_as_dataset
  ):
    with caplog.at_level(logging.WARNING, logger=splits.__name__):
      split = splits.open_split(data, 'test')
  assert split.num_examples == TEST
  assert not [r for r in caplog.records if r.name == splits.__name__]


def test_pinned_version_does_not_warn(mocked, caplog):
  assert str(tfds.builder('cifar100', data_dir=mocked).info.version) == '3.0.2'
  with caplog.at_level(logging.WARNING, logger=splits.__name__):
    splits.open_split(data_config('vtab', 'cifar100', mocked), 'test')
  assert not [r for r in caplog.records if r.name == splits.__name__]
