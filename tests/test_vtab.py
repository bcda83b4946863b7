"""Tests for gps_jax.data.vtab: the VTAB-1k registry, label transforms, to_example.

The expected table below is typed from the reference (shared/reference/README.md,
section 3), independently of the module. No dataset is needed: the TFDS checks
use builder code only, and the end-to-end check uses ``tfds.testing.mock_data``.
"""

import math

import numpy as np
import pytest
import tensorflow as tf  # Imported at collection so no test pays the import.
import tensorflow_datasets as tfds

from gps_jax.data import vtab
from gps_jax.data.vtab import TASKS, bin_label, check_version, get_task, to_example

# name: (TFDS name, val200, test, classes, VPT version)
EXPECTED = {
  'caltech101': ('caltech101', 'train[2754:2954]', 'test', 102, '3.0.1'),
  'cifar100': ('cifar100', 'train[45000:45200]', 'test', 100, '3.0.2'),
  'dtd': ('dtd', 'validation[:200]', 'test', 47, '3.0.1'),
  'oxford_flowers102': ('oxford_flowers102', 'validation[:200]', 'test', 102, '2.1.1'),
  'oxford_iiit_pet': ('oxford_iiit_pet', 'train[2944:3144]', 'test', 37, '3.2.0'),
  'svhn': ('svhn_cropped', 'train[65931:66131]', 'test', 10, '3.0.0'),
  'sun397': ('sun397/tfds', 'validation[:200]', 'test', 397, '4.0.0'),
  'patch_camelyon': ('patch_camelyon', 'validation[:200]', 'test', 2, '2.0.0'),
  'eurosat': ('eurosat/rgb', 'train[16200:16400]', 'train[21600:]', 10, '2.0.0'),
  'resisc45': ('resisc45', 'train[18900:19100]', 'train[25200:]', 45, '3.0.0'),
  'diabetic_retinopathy': (
    'diabetic_retinopathy_detection/btgraham-300',
    'validation[:200]',
    'test',
    5,
    '3.0.0',
  ),
  'clevr_count': ('clevr', 'train[63000:63200]', 'validation', 8, '3.1.0'),
  'clevr_distance': ('clevr', 'train[63000:63200]', 'validation', 6, '3.1.0'),
  'dmlab': ('dmlab', 'validation[:200]', 'test', 6, '2.0.1'),
  'kitti_distance': ('kitti', 'validation[:200]', 'test', 4, '3.2.0'),
  'dsprites_location': ('dsprites', 'train[589824:590024]', 'train[663552:]', 16, '2.0.0'),
  'dsprites_orientation': ('dsprites', 'train[589824:590024]', 'train[663552:]', 16, '2.0.0'),
  'smallnorb_azimuth': ('smallnorb', 'test[:200]', 'test[50%:]', 18, '2.0.0'),
  'smallnorb_elevation': ('smallnorb', 'test[:200]', 'test[50%:]', 9, '2.0.0'),
}
# Tasks whose label is a source feature with more classes, grouped: (feature, source classes).
SOURCE_LABELS = {
  'dsprites_location': ('label_x_position', 32),
  'dsprites_orientation': ('label_orientation', 40),
  'smallnorb_azimuth': ('label_azimuth', 18),
  'smallnorb_elevation': ('label_elevation', 9),
}


# ----------------------------------------------------------------------------- registry


def test_registry_has_the_19_tasks_in_table_order():
  assert len(TASKS) == 19
  assert list(TASKS) == list(EXPECTED)
  assert all(name == spec.name for name, spec in TASKS.items())


@pytest.mark.parametrize('name', list(EXPECTED))
def test_task_splits_classes_and_version(name):
  tfds_name, val, test, classes, version = EXPECTED[name]
  spec = get_task(name)
  assert spec.tfds_name == tfds_name
  assert spec.train_split == 'train[:800]'
  assert spec.val_split == val
  assert spec.trainval_split == f'train[:800]+{val}'
  assert spec.test_split == test
  assert spec.num_classes == classes
  assert spec.version == version
  assert spec.image_key == 'image'
  assert spec.manual_download == (name in ('resisc45', 'diabetic_retinopathy'))
  assert spec.grayscale == name.startswith(('dsprites', 'smallnorb'))
  assert spec.label_fn is None or spec.label_fn in vtab.LABEL_FNS
  transformed = ('clevr_count', 'clevr_distance', 'kitti_distance', *SOURCE_LABELS)
  assert spec.label_fn == (name if name in transformed else None)


def test_get_task_unknown_name_lists_valid_names():
  with pytest.raises(ValueError, match='unknown VTAB-1k task') as err:
    get_task('cifar10')
  assert all(name in str(err.value) for name in EXPECTED)


def test_spec_is_frozen():
  with pytest.raises(AttributeError):
    get_task('dtd').num_classes = 3


@pytest.mark.parametrize('name', list(EXPECTED))
def test_table_agrees_with_tfds_builder_features(name):
  """Class counts and feature names against the installed TFDS builder code."""
  spec = get_task(name)
  features = tfds.builder(spec.tfds_name).info.features
  assert spec.image_key in features
  if spec.label_fn is None:
    assert features['label'].num_classes == spec.num_classes
  elif name in SOURCE_LABELS:
    key, source_classes = SOURCE_LABELS[name]
    assert features[key].num_classes == source_classes
  elif name.startswith('clevr'):
    assert {'size', 'pixel_coords'} <= set(features['objects'].feature.keys())
  else:  # kitti
    assert {'type', 'location'} <= set(features['objects'].feature.keys())
  if spec.grayscale:
    assert features[spec.image_key].shape[-1] == 1


# ----------------------------------------------------------------------------- labels


def as_int(x):
  return int(tf.convert_to_tensor(x).numpy())


def clevr_scene(depths):
  n = len(depths)
  return {
    'objects': {
      'size': tf.zeros([n], tf.int64),
      'pixel_coords': tf.constant([[100.0, 50.0, d] for d in depths], tf.float32),
    }
  }


def kitti_scene(types, depths):
  return {
    'objects': {
      'type': tf.constant(types, tf.int64),
      'location': tf.reshape(tf.constant([[1.0, 2.0, z] for z in depths], tf.float32), [-1, 3]),
    }
  }


def test_bin_label_boundaries():
  thresholds = [0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0]
  values = [-1.0, 0.0, 0.01, 8.0, 8.01, 8.5, 9.2, 10.0, 10.5, 100.0, 100.5]
  expected = [-1, -1, 0, 0, 1, 1, 3, 4, 5, 5, 6]
  assert [as_int(bin_label(v, thresholds)) for v in values] == expected
  vector = bin_label(tf.constant(values), thresholds)
  assert vector.dtype == tf.int64 and vector.numpy().tolist() == expected
  assert as_int(bin_label(1000.0, [-100.0, 8.0, 20.0, 999.0])) == 3


def test_clevr_distance_and_count():
  fns = vtab.LABEL_FNS
  assert as_int(fns['clevr_distance'](clevr_scene([12.0, 9.2]))) == 3
  assert as_int(fns['clevr_distance'](clevr_scene([7.0, 30.0, 9.9]))) == 0
  assert as_int(fns['clevr_count'](clevr_scene([9.0] * 3))) == 0
  assert as_int(fns['clevr_count'](clevr_scene([9.0] * 10))) == 7
  assert fns['clevr_count'](clevr_scene([9.0] * 4)).dtype == tf.int64


def test_kitti_distance():
  fn = vtab.LABEL_FNS['kitti_distance']
  assert as_int(fn(kitti_scene([3, 4], [2.0, 3.0]))) == 3  # Pedestrian, cyclist: no vehicle.
  assert as_int(fn(kitti_scene([], []))) == 3
  assert as_int(fn(kitti_scene([0, 1], [5.0, 25.0]))) == 0  # Car at 5, van at 25.
  assert as_int(fn(kitti_scene([0], [8.0]))) == 0
  assert as_int(fn(kitti_scene([0], [8.01]))) == 1
  assert (
    as_int(fn(kitti_scene([2, 3], [30.0, 1.0]))) == 2
  )  # Truck at 30; the pedestrian is ignored.
  graph_fn = tf.function(fn)
  assert as_int(graph_fn(kitti_scene([4, 1, 0], [1.0, 15.0, 19.0]))) == 1


def test_dsprites_and_smallnorb_labels():
  fns = vtab.LABEL_FNS
  loc, ori = fns['dsprites_location'], fns['dsprites_orientation']
  assert as_int(loc({'label_x_position': tf.constant(31, tf.int64)})) == 15
  assert as_int(ori({'label_orientation': tf.constant(39, tf.int64)})) == 15
  assert as_int(ori({'label_orientation': tf.constant(2, tf.int64)})) == 0
  for v in range(32):
    assert as_int(loc({'label_x_position': tf.constant(v, tf.int64)})) == v // 2
  for v in range(40):
    assert as_int(ori({'label_orientation': tf.constant(v, tf.int64)})) == math.floor(v / 2.5)
  norb = {'label_azimuth': tf.constant(17, tf.int64), 'label_elevation': tf.constant(8, tf.int64)}
  assert as_int(fns['smallnorb_azimuth'](norb)) == 17
  assert as_int(fns['smallnorb_elevation'](norb)) == 8


# ----------------------------------------------------------------------------- to_example


def test_to_example_dsprites_tiles_and_scales():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 2, size=(64, 64, 1)).astype(np.uint8)
  example = {'image': tf.constant(image), 'label_x_position': tf.constant(31, tf.int64)}
  out = to_example(get_task('dsprites_location'), example)
  assert out['image'].shape == (64, 64, 3) and out['image'].dtype == tf.uint8
  np.testing.assert_array_equal(out['image'].numpy(), np.repeat(image * 255, 3, axis=-1))
  assert set(np.unique(out['image'].numpy())) == {0, 255}
  assert out['label'].dtype == tf.int64 and as_int(out['label']) == 15


def test_to_example_smallnorb_tiles_without_scaling():
  image = np.arange(96 * 96, dtype=np.uint8).reshape(96, 96, 1)
  example = {
    'image': tf.constant(image),
    'label_azimuth': tf.constant(5, tf.int64),
    'label_elevation': tf.constant(2, tf.int64),
  }
  out = to_example(get_task('smallnorb_elevation'), example)
  assert out['image'].shape == (96, 96, 3)
  np.testing.assert_array_equal(out['image'].numpy(), np.repeat(image, 3, axis=-1))
  assert as_int(out['label']) == 2


def test_to_example_rgb_uses_label_feature():
  image = tf.fill([32, 32, 3], tf.constant(7, tf.uint8))
  out = to_example(get_task('cifar100'), {'image': image, 'label': tf.constant(42, tf.int64)})
  assert out['image'].shape == (32, 32, 3) and as_int(out['label']) == 42
  assert out['label'].dtype == tf.int64
  with pytest.raises(ValueError, match='uint8'):
    to_example(get_task('cifar100'), {'image': tf.zeros([4, 4, 3]), 'label': 0})


# ----------------------------------------------------------------------------- versions


def test_check_version():
  spec = get_task('cifar100')
  assert check_version(spec, '3.0.2') is None
  assert check_version(spec, tfds.core.Version('3.0.2')) is None
  message = check_version(spec, '3.0.3')
  assert '3.0.2' in message and '3.0.3' in message and 'cifar100' in message
  pets = check_version(get_task('oxford_iiit_pet'), '4.0.0')
  assert '3.2.0' in pets and '4.0.0' in pets and 'only 4.0.0' in pets


# ----------------------------------------------------------------------------- mock TFDS


def consistent_objects(example):
  """mock_data draws each per-object field with its own random length; trims to the shortest."""
  objects = example['objects']
  n = tf.reduce_min([tf.shape(v)[0] for v in objects.values()])
  return {**example, 'objects': {k: v[:n] for k, v in objects.items()}}


@pytest.mark.slow
@pytest.mark.parametrize('name', list(EXPECTED))
def test_mock_tfds_load_and_to_example(name):
  """tfds.load on every split string + to_example over random examples from the builder code.

  mock_data does not check split names or slice bounds (any split yields
  num_examples examples); it checks that the split strings parse and that the
  feature names, shapes and dtypes the label transforms use exist in the builder.
  """
  spec = get_task(name)
  with tfds.testing.mock_data(num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE):
    for split in (spec.train_split, spec.val_split, spec.trainval_split, spec.test_split):
      assert tfds.load(spec.tfds_name, split=split).cardinality().numpy() != 0
    ds = tfds.load(spec.tfds_name, split=spec.train_split)
  if 'objects' in ds.element_spec:
    ds = ds.map(consistent_objects)
  examples = list(ds.map(lambda ex: (to_example(spec, ex), ex)).as_numpy_iterator())
  assert len(examples) == 8
  for out, raw in examples:
    image, label = out['image'], out['label']
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3
    assert label.dtype == np.int64 and label.shape == ()
    if name == 'clevr_count':  # Random object counts fall outside CLEVR's 3..10.
      assert label == len(raw['objects']['size']) - 3
    else:
      assert 0 <= label < spec.num_classes
