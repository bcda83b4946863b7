"""config.model.head_init: a new task head starts at zero (the demo) or as the reference's
timm head (trunc_normal_, std 0.02, bias zero), drawn from the run's init rng."""

import importlib.util
import os

import jax
import ml_collections
import numpy as np
import pytest
from scipy import stats

from gps_jax import backbone as backbone_lib
from gps_jax import config_defaults
from gps_jax import tree as tree_lib
from gps_jax import weights
from gps_jax.models import fitting, registry
from gps_jax.models.model_config import HEAD_INITS, TIMM_HEAD_STD, timm_trunc_normal
from gps_jax.vit_npz import save_vit_npz

CONFIGS = os.path.join(os.path.dirname(__file__), '..', 'configs')
STD = 0.02  # timm's trunc_normal_(std=.02), written out: not read from the code under test

# Small models of each family (features 64, 32, 32), 400 classes: a head of >= 12,800 draws.
SMALL = {
  'vit': ('Ti/16', dict(patch_size=8, hidden_size=64, num_layers=1, num_heads=2, mlp_dim=32)),
  'swin': ('T', dict(embed_dim=16, depths=(1, 1), num_heads=(1, 2), window_size=4)),
  'convnext': ('T', dict(depths=(1, 1), dims=(16, 32))),
}
CLASSES = 400


def _model(name, head_init, num_classes=CLASSES):
  variant, overrides = SMALL[name]
  cfg = registry.family(name).config(
    variant, num_classes=num_classes, image_size=32, head_init=head_init, **overrides
  )
  return weights.build_model(cfg)


def _head(name, head_init, seed):
  head = fitting.fresh_head(_model(name, head_init), rng=jax.random.PRNGKey(seed))
  return np.asarray(head['head/kernel']), np.asarray(head['head/bias'])


def test_timm_value_is_what_the_code_uses():
  assert TIMM_HEAD_STD == STD and HEAD_INITS == ('zeros', 'trunc_normal')


def test_the_initialiser_draws_timms_distribution():
  """Against timm's own trunc_normal_ (torch): same law, by a two-sample KS test; and
  flax's truncated_normal(0.02), which cuts at 2 std, is told apart by the same test."""
  torch = pytest.importorskip('torch')
  timm_init = pytest.importorskip('timm.layers').trunc_normal_
  shape = (768, 200)
  ours = np.asarray(timm_trunc_normal()(jax.random.PRNGKey(0), shape)).ravel()
  torch.manual_seed(0)
  ref = timm_init(torch.empty(shape), std=STD).numpy().ravel()  # a=-2, b=2: timm's defaults
  assert abs(ours.mean()) < 5 * STD / np.sqrt(ours.size)
  assert ours.std() == pytest.approx(STD, rel=0.01) and ref.std() == pytest.approx(STD, rel=0.01)
  # Bounds at +-2 absolute (100 std) never bind: the tails are a normal's, not cut at 2 std.
  assert np.abs(ours).max() <= 2.0 and np.abs(ours).max() > 4 * STD
  assert np.mean(np.abs(ours) > 2 * STD) == pytest.approx(0.0455, abs=0.003)
  assert stats.ks_2samp(ours, ref).pvalue > 1e-3
  flax_cut = np.asarray(jax.nn.initializers.truncated_normal(STD)(jax.random.PRNGKey(0), shape))
  assert stats.ks_2samp(flax_cut.ravel(), ref).pvalue < 1e-6  # the test can fail


def test_timm_heads_are_trunc_normal_with_zero_bias():
  """What the reference's heads started from: timm's ViT / ConvNeXt `_init_weights` on a
  new Linear head (the checkpoint's head is dropped for another class count)."""
  timm = pytest.importorskip('timm')
  import torch

  torch.manual_seed(0)
  vit = timm.create_model('vit_tiny_patch16_224', pretrained=False, num_classes=1000)
  convnext = timm.create_model('convnext_atto', pretrained=False, num_classes=1000)
  for head in (vit.head, convnext.head.fc):
    w, b = head.weight.detach().numpy(), head.bias.detach().numpy()
    assert not b.any()
    assert w.std() == pytest.approx(STD, rel=0.02) and abs(w.mean()) < 1e-3
    assert np.abs(w).max() > 4 * STD  # not cut at 2 std either


@pytest.mark.parametrize('name', list(SMALL))
def test_trunc_normal_head_of_each_family(name):
  kernel, bias = _head(name, 'trunc_normal', seed=0)
  assert kernel.shape[1] == CLASSES and kernel.size >= 12_800
  assert not bias.any() and bias.shape == (CLASSES,)
  n = kernel.size
  assert abs(kernel.mean()) < 5 * STD / np.sqrt(n)
  assert kernel.std() == pytest.approx(STD, rel=5 / np.sqrt(2 * n))  # 5 sigma of the estimate
  assert np.abs(kernel).max() <= 2.0 and np.abs(kernel).max() > 3 * STD
  same, _ = _head(name, 'trunc_normal', seed=0)
  other, _ = _head(name, 'trunc_normal', seed=1)
  np.testing.assert_array_equal(kernel, same)  # the run's seed decides the head
  assert np.mean(kernel == other) < 0.01


@pytest.mark.parametrize('name', list(SMALL))
def test_zeros_head_and_the_backbone_does_not_move(name):
  """'zeros' (the default) gives the zero head; switching the head init changes the head
  only: every other parameter is drawn as before from the same rng."""
  kernel, bias = _head(name, 'zeros', seed=0)
  assert not kernel.any() and not bias.any()
  rng = jax.random.PRNGKey(3)
  zero = tree_lib.flat(weights.init_params(_model(name, 'zeros', num_classes=7), rng))
  tn = tree_lib.flat(weights.init_params(_model(name, 'trunc_normal', num_classes=7), rng))
  assert set(zero) == set(tn)
  for path in zero:
    if path != 'head/kernel':
      np.testing.assert_array_equal(zero[path], tn[path], err_msg=path)
  assert tn['head/kernel'].std() > 0.01


def _config_file(file, arg=None):
  spec = importlib.util.spec_from_file_location(file, os.path.join(CONFIGS, file))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg is not None else module.get_config()


def test_demo_head_stays_zero():
  c = _config_file('demo.py')
  for m in (c.model, c.upstream.model):
    assert m.head_init == 'zeros'
    model = weights.build_model({**m.to_dict(), 'num_classes': 10})
    head = fitting.fresh_head(model, rng=jax.random.PRNGKey(42))
    assert head['head/kernel'].shape == (128, 10)
    assert not np.asarray(head['head/kernel']).any() and not np.asarray(head['head/bias']).any()


def test_paper_configs_use_the_timm_head():
  for c in (
    _config_file('vtab.py', 'dtd'),
    _config_file('fgvc.py', 'cub,swin_b'),
    _config_file('cifar100.py'),
    config_defaults.paper_config(
      k=1, batch_size=32, lr=1e-3, drop_path=0.0, model_selection=False, backbone='convnext_b'
    ),
  ):
    assert c.model.head_init == 'trunc_normal'
    model = weights.build_model({**c.model.to_dict(), 'num_classes': 3})
    assert model.head_init == 'trunc_normal'  # the Flax module reads the key


@pytest.mark.parametrize('reinit_head', [True, False])
def test_a_dropped_checkpoint_head_is_the_seeded_trunc_normal_one(tmp_path, reinit_head):
  """gps_jax.backbone.load_params: the checkpoint's backbone, and the head of init_params(model,
  rng) whether reinit_head replaces it or the file's head (3 classes) does not fit."""
  variant, overrides = SMALL['vit']
  file_cfg = registry.family('vit').config(variant, num_classes=3, image_size=32, **overrides)
  file_params = weights.init_params(weights.build_model(file_cfg), jax.random.PRNGKey(7))
  save_vit_npz(tmp_path / 'base.npz', file_params)

  c = config_defaults.experiment_config()
  c.model = ml_collections.ConfigDict({
    **file_cfg.to_dict(), 'num_classes': CLASSES, 'checkpoint': str(tmp_path / 'base.npz'),
    'require_checkpoint': False, 'reinit_head': reinit_head, 'head_init': 'trunc_normal',
  })  # fmt: skip
  model_config = c.model.to_dict()
  model = weights.build_model(model_config)
  params = backbone_lib.load_params(c, model, model_config, jax.random.PRNGKey(0))
  want = fitting.fresh_head(model, rng=jax.random.PRNGKey(0))
  np.testing.assert_array_equal(params['head/kernel'], want['head/kernel'])
  assert not np.asarray(params['head/bias']).any()
  assert np.asarray(params['head/kernel']).std() == pytest.approx(STD, rel=0.05)
  # The backbone is the file's (seed 7), not the fresh init's (seed 0).
  want_kernel = tree_lib.flat(file_params)['embedding/kernel']
  np.testing.assert_array_equal(params['embedding/kernel'], want_kernel)
  other = backbone_lib.load_params(c, model, model_config, jax.random.PRNGKey(1))
  assert not np.array_equal(other['head/kernel'], params['head/kernel'])
