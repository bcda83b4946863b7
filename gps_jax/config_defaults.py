"""Defaults of an experiment config, shared by the files in configs/.

Every key read by gps_jax is listed here with its meaning; config files start
from `experiment_config()` and change what their recipe needs.
"""

from __future__ import annotations

import ml_collections


def experiment_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 42
  # gps | random | magnitude | full | linear | bitfit
  c.method = 'gps'
  # Ordered (regex, role) pairs on '/'-joined parameter paths; empty = the
  # method's preset in gps_jax.roles.METHOD_RULES.
  c.rules = ()
  # Ordered (regex, number of leading fan-in axes) pairs; empty = default.
  c.fan_in_rules = ()
  # Several methods on one backbone and data, with a comparison table.
  c.compare_methods = ()
  # Seeds to repeat every method with (mean±std in the table); empty = (seed,).
  c.compare_seeds = ()
  # {method: nested overrides}, e.g. {'full': {'optim': {'lr': 1e-3}}}.
  c.method_overrides = {}

  c.model = ml_collections.ConfigDict()
  c.model.name = 'vit'
  c.model.variant = 'B/16'
  c.model.image_size = 224
  c.model.drop_path_rate = 0.0
  c.model.mean = (0.5, 0.5, 0.5)
  c.model.std = (0.5, 0.5, 0.5)
  c.model.checkpoint = ''  # vit_jax .npz; empty = random init
  c.model.reinit_head = True  # a new task always gets a fresh (zero) head

  c.data = ml_collections.ConfigDict()
  c.data.name = 'mnist_5k'
  c.data.data_dir = ''
  c.data.split_seed = 0
  c.data.train_split = 'train'
  c.data.val_split = 'val'  # empty: no validation split
  c.data.test_split = 'test'
  c.data.batch_size = 32
  c.data.eval_batch_size = 256

  c.gps = ml_collections.ConfigDict()
  c.gps.k = 1
  c.gps.temperature = 0.07
  c.gps.score = ''  # supcon | random | magnitude; empty = by method
  c.gps.batch_size = 0  # selection batch size; 0 = data.batch_size

  c.train = ml_collections.ConfigDict()
  c.train.epochs = 100
  c.train.steps = 0  # > 0 overrides epochs
  c.train.update_mode = 'sparse'  # sparse | dense
  c.train.label_smoothing = 0.0
  c.train.log_every = 50
  c.train.eval_every_epochs = 10.0

  c.optim = ml_collections.ConfigDict()
  c.optim.name = 'adam'
  c.optim.lr = 1e-3
  c.optim.weight_decay = 0.0
  c.optim.warmup_epochs = 10.0
  c.optim.warmup_init_lr = 1e-7
  c.optim.end_lr = 1e-8
  c.optim.grad_clip_norm = 0.0
  return c
