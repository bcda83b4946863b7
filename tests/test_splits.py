"""End-to-end tests of gps_jax.data.splits (sources 'vtab' and 'tfds') through the input pipeline.

No prepared TFDS data exists offline, so the builders are mocked with
``tfds.testing.mock_data``. Plain ``mock_data`` (policy USE_CODE) cannot serve
``open_split``: its builders are not prepared (``is_prepared()`` is False, so
``open_split`` rightly raises FileNotFoundError), their ``info.splits`` is empty
and every split string, sliced or not, yields ``num_examples`` examples whatever
its bounds. So the fixture below writes real metadata (``dataset_info.json``
with per-split example counts, no records) for every builder into a temporary
data_dir (the ``data_dir`` / USE_FILES route of ``mock_data``) and passes an
``as_dataset_fn`` that yields exactly ``info.splits[split].num_examples``
examples, cycling over a few random examples made from the builder's own
features. With real metadata TFDS resolves the split strings itself: absolute
slices such as ``train[63000:63200]`` need a train split of at least 63200
examples (a slice past the end raises ValueError, it is not empty), so the
counts in ``SPLIT_SIZES`` are the smallest that keep every slice full, and the
open-ended splits (``test``, ``train[21600:]``...) small.

The random examples are made consistent the way real ones are: per-object
fields of one length (CLEVR 3 to 10 objects), valid boxes, dsprites images in
{0, 1}.
"""

import json
import logging
import math
import os
import re

import numpy as np
import pytest
import tensorflow as tf  # Imported at collection so no test pays the import.
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.testing import mocking

from gps_jax.config_defaults import experiment_config
from gps_jax.data import splits, vtab
from gps_jax.data.input_pipeline import (
  eval_batches,
  recipe_image_fns,
  train_batches,
  two_view_batches,
)

MEAN = STD = (0.5, 0.5, 0.5)
SIZE = 32
BATCH = 4
POOL = 4  # Distinct random examples per builder; a split cycles over them.
TEST = 6  # Open-ended evaluation splits: not a multiple of BATCH, so eval pads.

# Examples per split written to the mocked metadata: the smallest counts for which every
# split string of vtab.TASKS and splits.TFDS_SETS is full (train[:800], val200 slices).
SPLIT_SIZES = {
  'caltech101': {'train': 2954 + 10, 'test': TEST},
  'cifar100': {'train': 45200 + 10, 'test': TEST},
  'dtd': {'train': 810, 'validation': 210, 'test': TEST},
  'oxford_flowers102': {'train': 810, 'validation': 210, 'test': TEST},
  'oxford_iiit_pet': {'train': 3144 + 10, 'test': TEST},
  'svhn_cropped': {'train': 66131 + 10, 'test': TEST},
  'sun397/tfds': {'train': 810, 'validation': 210, 'test': TEST},
  'patch_camelyon': {'train': 810, 'validation': 210, 'test': TEST},
  'eurosat/rgb': {'train': 21600 + TEST},
  'resisc45': {'train': 25200 + TEST},
  'diabetic_retinopathy_detection/btgraham-300': {'train': 810, 'validation': 210, 'test': TEST},
  'clevr': {'train': 63200 + 10, 'validation': TEST},
  'dmlab': {'train': 810, 'validation': 210, 'test': TEST},
  'kitti': {'train': 810, 'validation': 210, 'test': TEST},
  'dsprites': {'train': 663552 + TEST},
  'smallnorb': {'train': 810, 'test': 2 * TEST + 200},  # test[:200], test[50%:].
  'caltech_birds2011': {'train': 50, 'test': TEST},
  'stanford_dogs': {'train': 50, 'test': TEST},
  'cars196': {'train': 50, 'test': TEST},
}
# Expected examples per VTAB-1k role: val200 is 200 everywhere, trainval 1000.
VTAB_TEST_SIZES = {'smallnorb_azimuth': 106, 'smallnorb_elevation': 106}
# Expected examples per TFDS_SETS role, from SPLIT_SIZES and the split strings.
TFDS_COUNTS = {
  'cub': {'train': 45, 'val': 5, 'trainval': 50, 'test': TEST},
  'oxford_flowers': {'train': 810, 'val': 210, 'trainval': 1020, 'test': TEST},
  'stanford_dogs': {'train': 45, 'val': 5, 'trainval': 50, 'test': TEST},
  'stanford_cars': {'train': 45, 'val': 5, 'trainval': 50, 'test': TEST},
  'cifar100': {'train': 45000, 'val': 210, 'trainval': 45210, 'test': TEST},
}


# ----------------------------------------------------------------------------- mocked TFDS


def write_metadata(tfds_name, sizes, data_dir):
  """dataset_info.json (and feature files) of a builder with `sizes` examples per split."""
  builder = tfds.builder(tfds_name, data_dir=data_dir)
  os.makedirs(builder.data_dir, exist_ok=True)
  infos = []
  for split, n in sizes.items():
    template = tfds.core.ShardedFileTemplate(
      data_dir=epath.Path(builder.data_dir),
      dataset_name=builder.name,
      split=split,
      filetype_suffix='tfrecord',
    )
    infos.append(
      tfds.core.SplitInfo(name=split, shard_lengths=[n], num_bytes=0, filename_template=template)
    )
  builder.info.set_splits(tfds.core.SplitDict(infos))
  builder.info.write_to_directory(builder.data_dir)


def _sorted_boxes(boxes):
  """(ymin, xmin, ymax, xmax) boxes with min <= max, as BBoxFeature requires."""
  boxes = np.array(boxes, np.float32)
  lo = np.minimum(boxes[..., :2], boxes[..., 2:])
  hi = np.maximum(boxes[..., :2], boxes[..., 2:])
  return np.concatenate([lo, hi], axis=-1)


def realistic(builder_name, features, example, rng):
  """Makes a random example consistent like a real one (see the module docstring)."""
  example = dict(example)
  for key, feature in features.items():
    if isinstance(feature, tfds.features.Sequence):
      fields = dict(example[key])
      length = min(len(v) for v in fields.values())
      if builder_name == 'clevr' and key == 'objects':
        length = int(rng.integers(3, min(length, 10) + 1))
      fields = {k: v[:length] for k, v in fields.items()}
      for sub_key, sub_feature in feature.feature.items():
        if isinstance(sub_feature, tfds.features.BBoxFeature):
          fields[sub_key] = _sorted_boxes(fields[sub_key])
      if builder_name == 'clevr' and key == 'objects':  # Depths over all 6 distance bins.
        fields['pixel_coords'] = fields['pixel_coords'] * np.float32([1, 1, 12])
      if builder_name == 'kitti' and key == 'objects':  # Depths over all 4 distance bins.
        fields['location'] = fields['location'] * np.float32([1, 1, 30])
      example[key] = fields
    elif isinstance(feature, tfds.features.BBoxFeature):
      example[key] = _sorted_boxes(example[key])
  if builder_name == 'dsprites':
    example['image'] = rng.integers(0, 2, size=example['image'].shape).astype(np.uint8)
  return example


def to_tensor(value, spec):
  """An encoded example as tensors shaped like `spec` (nested dicts of TensorInfo)."""
  if isinstance(spec, dict):
    return {key: to_tensor(value[key], sub_spec) for key, sub_spec in spec.items()}
  if spec.dtype == tf.string:  # Text encodes to bytes or 0-d object arrays.
    value = np.asarray(value, dtype=object)
    value = np.array([np.asarray(v).item() for v in value.flat], object).reshape(value.shape)
  else:  # A Sequence feature encodes to a list of per-item arrays: stack them.
    value = np.asarray(value, dtype=spec.np_dtype)
  if not value.size:
    value = value.reshape((0, *spec.shape[1:]))
  return tf.convert_to_tensor(value)


def mock_as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False, **kwargs):
  """FileReaderBuilder._as_dataset: exactly as many examples as the metadata says `split` has."""
  del read_config, shuffle_files, kwargs
  count = self.info.splits[split].num_examples
  features = self.info.features
  rng = np.random.default_rng(0)
  raw = mocking.RandomFakeGenerator(features, POOL)
  pool = [features.encode_example(realistic(self.name, features, ex, rng)) for ex in raw]
  specs = features.get_serialized_info()
  ds = None
  for example in pool:  # from_tensors: from_generator cannot take object (text) arrays.
    one = tf.data.Dataset.from_tensors(to_tensor(example, specs))
    ds = one if ds is None else ds.concatenate(one)
  ds = ds.repeat().take(count)
  ds = ds.apply(tf.data.experimental.assert_cardinality(count))
  return ds.map(lambda ex: features.decode_example(ex, decoders=decoders))


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


def data_config(source, name, data_dir):
  config = experiment_config()
  config.data.source = source
  config.data.name = name
  config.data.data_dir = data_dir
  return config.data


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


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize('task', list(vtab.TASKS))
def test_vtab_unprepared_names_tfds_build(tmp_path, task):
  spec = vtab.TASKS[task]
  data = data_config('vtab', task, str(tmp_path))
  with pytest.raises(FileNotFoundError) as err:
    splits.open_split(data, 'train')
  message = str(err.value)
  assert spec.tfds_name in message and 'tfds build' in message and str(tmp_path) in message
  assert ('manual_dir' in message) == (task in ('resisc45', 'diabetic_retinopathy'))


def test_tfds_unprepared_names_tfds_build(tmp_path):
  with pytest.raises(FileNotFoundError, match='tfds build caltech_birds2011'):
    splits.open_split(data_config('tfds', 'cub', str(tmp_path)), 'test')


def test_unknown_vtab_task_lists_valid_names(tmp_path):
  data = data_config('vtab', 'cifar10', str(tmp_path))
  for call in (lambda: splits.open_split(data, 'train'), lambda: splits.num_classes(data)):
    with pytest.raises(ValueError, match='cifar10') as err:
      call()
    assert all(name in str(err.value) for name in vtab.TASKS)


def test_unknown_source(tmp_path):
  data = data_config('hub', 'cifar100', str(tmp_path))
  with pytest.raises(ValueError, match=r'config\.data\.source') as err:
    splits.open_split(data, 'train')
  assert "'hub'" in str(err.value) and all(s in str(err.value) for s in splits.SOURCES)
  with pytest.raises(ValueError, match=r'config\.data\.source'):
    splits.num_classes(data)


def test_slice_past_the_prepared_split_names_the_split(tmp_path):
  """TFDS rejects an absolute slice past the end of the split (it is not silently empty)."""
  write_metadata('clevr', {'train': 63100, 'validation': TEST}, str(tmp_path))
  data = data_config('vtab', 'clevr_count', str(tmp_path))
  with tfds.testing.mock_data(
    policy=tfds.testing.MockPolicy.USE_FILES, data_dir=str(tmp_path), as_dataset_fn=mock_as_dataset
  ):
    assert splits.open_split(data, 'train').num_examples == 800
    with pytest.raises(ValueError, match=re.escape('train[63000:63200]')):
      splits.open_split(data, 'val')


@pytest.mark.parametrize('source', ['vtab', 'tfds'])
def test_bad_split_role(tmp_path, source):
  data = data_config(source, 'cifar100', str(tmp_path))
  with pytest.raises(ValueError, match="'validation'"):
    splits.open_split(data, 'validation')


def test_vpt_folder_needs_num_classes(tmp_path):
  data = data_config('vpt_folder', 'cub', str(tmp_path))
  with pytest.raises(ValueError, match=r'config\.data\.num_classes'):
    splits.open_split(data, 'train')
  with pytest.raises(ValueError, match=r'config\.data\.num_classes'):
    splits.num_classes(data)


@pytest.mark.parametrize('name', ['dtd', 'clevr_count', 'oxford_flowers102'])
def test_tfds_source_rejects_vtab_only_names(tmp_path, name):
  data = data_config('tfds', name, str(tmp_path))
  with pytest.raises(ValueError, match='source "vtab"') as err:
    splits.open_split(data, 'train')
  assert all(s in str(err.value) for s in splits.TFDS_SETS)


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
