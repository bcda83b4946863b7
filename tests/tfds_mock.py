"""TFDS builders mocked for the tests of gps_jax.data.splits (tests/test_splits_sources.py,
tests/test_splits_errors.py; tests/ is on sys.path under pytest).

No prepared TFDS data exists offline, so the builders are mocked with
``tfds.testing.mock_data``. Plain ``mock_data`` (policy USE_CODE) cannot serve
``open_split``: its builders are not prepared (``is_prepared()`` is False, so
``open_split`` rightly raises FileNotFoundError), their ``info.splits`` is empty
and every split string, sliced or not, yields ``num_examples`` examples whatever
its bounds. So ``write_metadata`` writes real metadata (``dataset_info.json``
with per-split example counts, no records) of a builder into a temporary
data_dir (the ``data_dir`` / USE_FILES route of ``mock_data``; the ``mock_dir``
fixture of test_splits_sources.py writes every builder's), and ``mock_as_dataset``
is an ``as_dataset_fn`` that yields exactly ``info.splits[split].num_examples``
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

import os

import numpy as np
import tensorflow as tf  # Imported at collection so no test pays the import.
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.testing import mocking

from gps_jax.config_defaults import experiment_config

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


def data_config(source, name, data_dir):
  config = experiment_config()
  config.data.source = source
  config.data.name = name
  config.data.data_dir = data_dir
  return config.data
