"""gps_jax.data.splits's errors: unprepared data names its `tfds build`, unknown tasks,
sources and roles list the valid ones, and a slice past a prepared split names it."""

import re

import pytest
import tensorflow_datasets as tfds
from tfds_mock import TEST, data_config, mock_as_dataset, write_metadata

from gps_jax.data import splits, vtab

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
