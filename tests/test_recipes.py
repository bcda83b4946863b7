"""The benchmark configs (VTAB-1k, FGVC, CIFAR-100) and their runs end to end on small data."""

import importlib.util
import json
import os
import types

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from gps_jax import experiment
from gps_jax.data import vtab

CONFIGS = os.path.join(os.path.dirname(__file__), '..', 'configs')


def _config(file, arg=None):
  spec = importlib.util.spec_from_file_location(file, os.path.join(CONFIGS, file))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  # As config_flags does: get_config() without an argument when the flag has no ':'.
  return module.get_config(arg) if arg is not None else module.get_config()


# Transcribed independently from the reference README, section 2 (VTAB-1k recipe):
# task: (batch, lr, drop-path); K = 1 except patch_camelyon (2).
VTAB_TABLE = """
caltech101 16 2e-3 0 | cifar100 32 1e-2 0 | dtd 16 2e-3 0 | oxford_flowers102 16 2e-3 0
oxford_iiit_pet 32 3e-3 0 | svhn 32 5e-3 0 | sun397 16 2.5e-3 0 | patch_camelyon 32 4e-3 0
eurosat 16 2e-3 0 | resisc45 16 1.5e-3 0.1 | diabetic_retinopathy 32 2e-3 0.2
clevr_count 16 3e-4 0.1 | clevr_distance 16 2e-3 0.1 | dmlab 16 1.5e-3 0.1 | kitti_distance 16 1e-3 0
dsprites_location 32 7e-3 0 | dsprites_orientation 16 5e-4 0.2 | smallnorb_azimuth 32 3e-3 0.1
smallnorb_elevation 32 3e-4 0.2
"""
# FGVC: name: (K, batch, lr, drop-path, EMA decay, classes).
FGVC_TABLE = {
  'cub': (2, 32, 3e-3, 0.0, 0.9998, 200),
  'nabirds': (20, 32, 1e-4, 0.1, 0.9998, 555),
  'oxford_flowers': (1, 32, 1e-3, 0.1, 0.99, 102),
  'stanford_cars': (15, 32, 5e-4, 0.0, 0.9998, 196),
  'stanford_dogs': (1, 64, 1e-4, 0.0, 0.9998, 120),
}


def _vtab_rows():
  rows = {}
  for item in VTAB_TABLE.replace('\n', '|').split('|'):
    if item.strip():
      name, batch, lr, dp = item.split()
      rows[name] = (int(batch), float(lr), float(dp))
  return rows


def _paper_schedule(c):
  assert (c.seed, c.train.epochs, c.optim.name, c.optim.weight_decay) == (42, 100, 'adam', 0.0)
  assert (c.optim.warmup_epochs, c.optim.warmup_init_lr, c.optim.end_lr) == (10, 1e-7, 1e-8)
  assert c.model.variant == 'B/16' and c.model.image_size == 224
  assert tuple(c.model.mean) == tuple(c.model.std) == (0.5, 0.5, 0.5)
  assert c.model.require_checkpoint and c.method == 'gps'
  # As the reference's timm scheduler ran: lr per epoch, 10 cooldown epochs; timm's head.
  assert (c.optim.schedule, c.train.cooldown_epochs) == ('timm_epoch_cosine', 10)
  assert c.model.head_init == 'trunc_normal'


def test_vtab_config_matches_the_reference_table_for_all_19_tasks():
  rows = _vtab_rows()
  assert set(rows) == set(vtab.TASKS)
  for task, (batch, lr, dp) in rows.items():
    c = _config('vtab.py', task)
    _paper_schedule(c)
    assert (c.data.batch_size, c.optim.lr, c.model.drop_path_rate) == (batch, lr, dp), task
    assert c.gps.k == (2 if task == 'patch_camelyon' else 1), task
    assert (c.data.source, c.data.name, c.data.recipe) == ('vtab', task, 'resize')
    # 'trainval' is train800val200 for VTAB sources.
    assert (c.data.train_split, c.data.val_split, c.data.test_split) == ('trainval', '', 'test')
    assert (c.train.mixup, c.train.cutmix, c.train.ema_decay) == (0, 0, 0)


def test_vtab_config_options():
  c = _config('vtab.py', 'dtd,val')
  assert (c.data.train_split, c.data.val_split, c.train.eval_every_epochs) == ('train', 'val', 10)
  assert _config('vtab.py', 'dtd,folder').data.source == 'vtab_folder'
  with pytest.raises(ValueError, match='valid names: caltech101'):
    _config('vtab.py', 'imagenet')
  with pytest.raises(ValueError, match='VTAB-1k task'):
    _config('vtab.py', None)
  with pytest.raises(ValueError, match=r"unknown option\(s\) \['fast'\]"):
    _config('vtab.py', 'dtd,fast')


@pytest.mark.parametrize('name', sorted(FGVC_TABLE))
def test_fgvc_config_matches_the_reference_table(name):
  k, batch, lr, dp, ema, classes = FGVC_TABLE[name]
  c = _config('fgvc.py', name)
  _paper_schedule(c)
  assert (c.gps.k, c.data.batch_size, c.optim.lr, c.model.drop_path_rate) == (k, batch, lr, dp)
  assert (c.train.ema_decay, c.data.num_classes) == (ema, classes)
  assert (c.data.source, c.data.recipe, c.data.resize_size) == ('vpt_folder', 'fgvc', 248)
  assert (c.train.mixup, c.train.cutmix, c.train.label_smoothing) == (0.8, 1.0, 0.1)
  assert (c.data.train_split, c.data.val_split, c.data.test_split) == ('trainval', '', 'test')


def test_fgvc_config_options():
  c = _config('fgvc.py', 'cub,tfds,val')
  assert (c.data.source, c.data.train_split, c.data.val_split) == ('tfds', 'train', 'val')
  with pytest.raises(ValueError, match='nabirds has no TFDS builder'):
    _config('fgvc.py', 'nabirds,tfds')


def test_cifar100_config():
  c = _config('cifar100.py')
  _paper_schedule(c)
  assert (c.data.source, c.data.name, c.data.train_split, c.data.test_split) == (
    'tfds',
    'cifar100',
    'trainval',
    'test',
  )
  assert _config('cifar100.py', 'val').data.val_split == 'val'


def test_missing_checkpoint_is_an_error_naming_the_option(tmp_path):
  c = _config('vtab.py', 'dtd')
  with pytest.raises(ValueError, match='config.model.checkpoint is empty'):
    experiment.run(c, str(tmp_path))


# ----------------------------------------------------------------------------- end to end


def _tiny_model(c, image_size=32):
  c.model.variant = ''
  c.model.update(
    dict(
      image_size=image_size,
      patch_size=8,
      hidden_size=16,
      num_layers=1,
      num_heads=2,
      mlp_dim=32,
      require_checkpoint=False,
    )
  )


def _quick(c):
  c.train.steps = 3
  c.data.batch_size = 4
  c.gps.batch_size = 4
  c.data.eval_batch_size = 8
  c.optim.warmup_epochs = 0


def test_vtab_recipe_runs_end_to_end_on_mock_tfds(tmp_path):
  c = _config('vtab.py', 'dtd,val')
  _tiny_model(c)
  _quick(c)
  c.data.data_dir = str(tmp_path / 'tfds')
  c.data.prepare = True  # mock_data's download_and_prepare is a no-op; is_prepared() is not mocked.
  with tfds.testing.mock_data(num_examples=12):
    results, params = experiment.run(c, str(tmp_path / 'run'))
  saved = json.load(open(tmp_path / 'run' / 'results.json'))
  assert saved['splits'] == {
    'train': 'dtd:train[:800]',
    'val': 'dtd:validation[:200]',
    'test': 'dtd:test',
  }
  assert saved['data_source'] == 'vtab' and 'nothing is chosen on test' in saved['protocol']
  assert 0.0 <= saved['test_accuracy'] <= 1.0 and 'best_val_accuracy' in saved
  assert saved['k'] == 1 and saved['selection']['batches'] == 3  # 12 // 4 two-view batches.
  assert os.path.isdir(tmp_path / 'run' / 'checkpoint')
  assert params['head/kernel'].shape == (16, 47)


def _write_vpt_folder(root, num_classes=3, per_split=(8, 4, 6)):
  rng = np.random.default_rng(0)
  os.makedirs(root / 'images' / 'a')
  for split, n in zip(('train', 'val', 'test'), per_split):
    entries = {}
    for i in range(n):
      key = f'a/{split}_{i}.jpg'
      h, w = rng.integers(30, 50, size=2)
      pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
      tf.io.write_file(str(root / 'images' / key), tf.io.encode_jpeg(pixels))
      entries[key] = int(i % num_classes)
    (root / f'{split}.json').write_text(json.dumps(entries))


def test_fgvc_recipe_runs_end_to_end_on_a_vpt_folder_with_mixup_and_ema(tmp_path):
  _write_vpt_folder(tmp_path / 'cub')
  c = _config('fgvc.py', 'cub')
  _tiny_model(c)
  _quick(c)
  c.data.data_dir = str(tmp_path / 'cub')
  c.data.num_classes = 3
  c.data.resize_size = 36
  c.train.ema_decay = 0.5
  results, params = experiment.run(c, str(tmp_path / 'run'))
  saved = json.load(open(tmp_path / 'run' / 'results.json'))
  assert saved['splits'] == {'train': 'cub:trainval', 'test': 'cub:test'}
  assert 'with the EMA weights' in saved['protocol']
  assert saved['test_accuracy'] == saved['test_accuracy_ema']
  # 6 test images: every accuracy is a multiple of 1/6.
  for key in ('test_accuracy_ema', 'test_accuracy_raw'):
    assert np.isclose(saved[key] * 6, round(saved[key] * 6))
  assert saved['train_steps'] == 3 and saved['k'] == 2
  assert params['head/kernel'].shape == (16, 3)


@pytest.mark.parametrize('backbone,name', [('swin_b', 'swin'), ('convnext_b', 'convnext')])
def test_fgvc_config_takes_the_table_4_backbones(backbone, name):
  c = _config('fgvc.py', f'cub,{backbone}')
  assert (c.model.name, c.model.variant, c.model.image_size) == (name, 'B', 224)
  assert tuple(c.model.mean) == (0.485, 0.456, 0.406)  # timm's ImageNet-21k files
  assert tuple(c.model.std) == (0.229, 0.224, 0.225)
  assert c.model.require_checkpoint and not c.model.checkpoint
  assert (c.gps.k, c.optim.lr, c.data.recipe) == (2, 3e-3, 'fgvc')  # the dataset's recipe
  if name == 'swin':
    assert c.model.window_size == 7 and c.model.embed_dim == 128
  else:
    assert tuple(c.model.dims) == (128, 256, 512, 1024)
  assert _config('fgvc.py', 'cub,vit_b16').model.variant == 'B/16'
  with pytest.raises(ValueError, match='choose one backbone'):
    _config('fgvc.py', 'cub,swin_b,convnext_b')


def test_demo_config_keeps_its_published_recipe():
  # README's demo numbers come from this recipe: AdamW (wd 1e-4) decays every
  # upstream parameter, biases and norms included; 4x4 patches of 28x28 images.
  c = _config('demo.py')
  u = c.upstream
  assert (u.method, u.optim.name, u.optim.lr, u.optim.weight_decay) == ('full', 'adamw', 1e-3, 1e-4)
  assert tuple(map(tuple, u.optim.weight_decay_rules)) == (('.*', 1.0),)
  assert (u.data.name, u.data.batch_size, u.train.epochs) == ('fashion_mnist', 128, 3)
  assert u.optim.warmup_epochs == 0.2
  assert u.name == 'demo-vit-fashion-mnist' and u.cache_dir == ''
  for m in (c.model, u.model):
    arch = (m.name, m.variant, m.image_size, m.patch_size, m.hidden_size, m.num_layers)
    assert arch + (m.num_heads, m.mlp_dim) == ('vit', '', 28, 7, 128, 4, 4, 256)
    assert not m.checkpoint and not m.require_checkpoint and m.reinit_head
  assert c.compare_methods == ('gps', 'random', 'linear', 'bitfit', 'full')
  for stage in (c, u):  # the per-step schedule, no cooldown and a zero head, as published
    assert (stage.optim.schedule, stage.train.cooldown_epochs) == ('warmup_cosine', 0)
    assert stage.model.head_init == 'zeros'
  assert (c.optim.lr, c.optim.weight_decay, c.train.epochs, c.gps.k) == (1e-2, 0.0, 20, 1)
  assert c.method_overrides.full.optim.lr == 1e-3


def test_paper_configs_interpolate_as_the_original():
  # FightingFighting/GPS (timm 0.6.5, ViT config interpolation 'bicubic'): VTAB runs
  # --no-aug, so train = eval = SupCon views = bicubic; FGVC runs --simple-aug with
  # timm's default --train-interpolation 'random' for crops and views, bicubic eval.
  # CIFAR-100 follows SSF's train.py: the same timm defaults as FGVC.
  def keys(c):
    d = c.data
    return d.train_interpolation, d.eval_interpolation, d.select_interpolation

  for arg in ('cifar100', 'dtd,val,folder', 'smallnorb_elevation'):
    assert keys(_config('vtab.py', arg)) == ('bicubic', 'bicubic', 'bicubic')
  for arg in ('cub', 'stanford_dogs,tfds', 'nabirds,swin_b'):
    assert keys(_config('fgvc.py', arg)) == ('random', 'bicubic', 'random')
  for arg in (None, 'val'):
    assert keys(_config('cifar100.py', arg)) == ('random', 'bicubic', 'random')
  assert keys(_config('demo.py')) == ('bilinear', 'bilinear', 'bilinear')


def test_paper_durations_train_the_cooldown_epochs():
  # The reference trains epochs + cooldown epochs (timm's create_scheduler count: 110);
  # the lr schedule spans the 100 epochs and the last 10 run at end_lr.
  c = _config('fgvc.py', 'cub')
  split = types.SimpleNamespace(name='cub:trainval', num_examples=1000)  # 31 batches of 32
  d = experiment.Durations.from_config(c, split)
  assert (d.steps_per_epoch, d.schedule_steps, d.cooldown_steps) == (31, 3100, 310)
  assert (d.total_steps, d.warmup_steps) == (3410, 310)
  c.train.steps = 50  # an explicit step count is the whole run
  d = experiment.Durations.from_config(c, split)
  assert (d.total_steps, d.schedule_steps, d.cooldown_steps) == (50, 50, 0)
  demo = experiment.Durations.from_config(_config('demo.py'), split)
  assert demo.total_steps == demo.schedule_steps == 20 * 31 and demo.cooldown_steps == 0
