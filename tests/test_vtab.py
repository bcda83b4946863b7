"""Tests for gps_jax.data.vtab: the VTAB-1k registry, label transforms and versions.

The expected table below is typed from the reference (shared/reference/README.md,
section 3), independently of the module. No dataset is needed: the TFDS checks
use builder code only (tests/test_splits_sources.py runs every task through
``tfds.testing.mock_data`` into batches).
"""

import math

import pytest
import tensorflow as tf  # Imported at collection so no test pays the import.
import tensorflow_datasets as tfds

from gps_jax.data import vtab
from gps_jax.data.vtab import TASKS, bin_label, check_version, get_task

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
