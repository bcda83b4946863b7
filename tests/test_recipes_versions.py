"""configs/vtab.py against the two published versions of the original VTAB scripts.

FightingFighting/GPS published train_scripts/vit/vtab/<dir>/train_gps.sh on 2024-10-09
(commit 41ac7da18646a6ba9225a089ab840b142b8ab66e) and rewrote 15 of the 19 on 2024-10-17
(commit c52ea8a3329f5c549ee4d9a1209c61bcee6d1ca0, still the newest version).
RECIPES follows the rewrite; RECIPES_2024_10_09 (option ``scripts_2024_10_09``) the first
version. The values below were typed from the scripts themselves, not from the config:
per script folder, "bz= lr= --drop-path --times_para" in each version.
"""

import importlib.util
import os

import pytest

from gps_jax.data import vtab

CONFIGS = os.path.join(os.path.dirname(__file__), '..', 'configs')

# script folder -> gps_jax task name.
FOLDERS = {
  'caltech101': 'caltech101',
  'cifar_100': 'cifar100',
  'dtd': 'dtd',
  'flowers102': 'oxford_flowers102',
  'pets': 'oxford_iiit_pet',
  'svhn': 'svhn',
  'sun397': 'sun397',
  'patch_camelyon': 'patch_camelyon',
  'eurosat': 'eurosat',
  'resisc45': 'resisc45',
  'diabetic_retinopathy': 'diabetic_retinopathy',
  'clevr_count': 'clevr_count',
  'clevr_dist': 'clevr_distance',
  'dmlab': 'dmlab',
  'kitti': 'kitti_distance',
  'dsprites_loc': 'dsprites_location',
  'dsprites_ori': 'dsprites_orientation',
  'smallnorb_azi': 'smallnorb_azimuth',
  'smallnorb_ele': 'smallnorb_elevation',
}

# folder: bz lr drop-path times_para, as written in 41ac7da (2024-10-09).
SCRIPTS_2024_10_09 = """
caltech101 16 0.002 0 1
cifar_100 32 0.01 0 1
clevr_count 32 0.001 0 1
clevr_dist 32 0.008 0 1
diabetic_retinopathy 16 0.0015 0.2 2
dmlab 16 0.003 0.1 1
dsprites_loc 32 0.007 0 1
dsprites_ori 32 0.005 0.2 1
dtd 16 0.0015 0 1
eurosat 32 0.001 0 1
flowers102 32 0.008 0 1
kitti 16 0.002 0 1
patch_camelyon 16 0.0015 0 2
pets 32 0.008 0 1
resisc45 32 0.001 0 1
smallnorb_azi 32 0.008 0 1
smallnorb_ele 32 0.008 0 1
sun397 16 0.0015 0 1
svhn 32 0.005 0 1
"""

# folder: bz lr drop-path times_para, as written in c52ea8a (2024-10-17).
SCRIPTS_2024_10_17 = """
caltech101 16 0.002 0 1
cifar_100 32 0.01 0 1
clevr_count 16 0.0003 0.1 1
clevr_dist 16 0.002 0.1 1
diabetic_retinopathy 32 0.002 0.2 1
dmlab 16 0.0015 0.1 1
dsprites_loc 32 0.007 0 1
dsprites_ori 16 0.0005 0.2 1
dtd 16 0.002 0 1
eurosat 16 0.002 0 1
flowers102 16 0.002 0 1
kitti 16 0.001 0 1
patch_camelyon 32 0.004 0 2
pets 32 0.003 0 1
resisc45 16 0.0015 0.1 1
smallnorb_azi 32 0.003 0.1 1
smallnorb_ele 32 0.0003 0.2 1
sun397 16 0.0025 0 1
svhn 32 0.005 0 1
"""

OPTION = 'scripts_2024_10_09'


def _module():
  spec = importlib.util.spec_from_file_location('vtab_config', os.path.join(CONFIGS, 'vtab.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _rows(text):
  """task -> (K, batch, lr, drop-path) from 'folder bz lr drop-path times_para' lines."""
  rows = {}
  for line in text.strip().splitlines():
    folder, bz, lr, dp, k = line.split()
    rows[FOLDERS[folder]] = (int(k), int(bz), float(lr), float(dp))
  assert len(rows) == 19
  return rows


def _selected(config):
  return (config.gps.k, config.data.batch_size, config.optim.lr, config.model.drop_path_rate)


def test_transcriptions_cover_the_19_tasks_and_differ_in_15():
  before, after = _rows(SCRIPTS_2024_10_09), _rows(SCRIPTS_2024_10_17)
  assert set(before) == set(after) == set(vtab.TASKS)
  same = sorted(t for t in before if before[t] == after[t])
  assert same == ['caltech101', 'cifar100', 'dsprites_location', 'svhn']


def test_tables_equal_the_transcriptions():
  m = _module()
  assert m.RECIPES == _rows(SCRIPTS_2024_10_17)
  assert m.RECIPES_2024_10_09 == _rows(SCRIPTS_2024_10_09)
  assert OPTION in m.OPTIONS


@pytest.mark.parametrize('task', sorted(vtab.TASKS))
def test_the_option_selects_the_2024_10_09_scripts(task):
  m = _module()
  assert _selected(m.get_config(f'{task},{OPTION}')) == _rows(SCRIPTS_2024_10_09)[task]
  assert _selected(m.get_config(task)) == _rows(SCRIPTS_2024_10_17)[task]


def test_the_option_changes_nothing_else_and_combines_with_the_others():
  m = _module()
  for arg in ('resisc45', 'resisc45,val', 'resisc45,folder'):
    new, old = m.get_config(arg), m.get_config(f'{arg},{OPTION}')
    for c in (new, old):
      c.gps.k, c.data.batch_size, c.optim.lr, c.model.drop_path_rate = 0, 0, 0.0, 0.0
    assert new.to_dict() == old.to_dict(), arg
  c = m.get_config(f'patch_camelyon,val,{OPTION}')
  assert (c.data.train_split, c.data.val_split) == ('train', 'val')
  assert _selected(c) == (2, 16, 1.5e-3, 0.0)
