"""The model trees with adapters and VPT prompts: the defaults leave every family's tree
unchanged, and pretrained files (a base, a fine-tuned file, a timm state dict) load into
models that have added modules."""

import re

import jax
import numpy as np
import pytest
from peft_models import ADDED, SMALL, P, flat_np, init, model_of
from tiny import TINY, random_params

from gps_jax import tree as tree_lib
from gps_jax import weights
from gps_jax.models import fitting, registry
from gps_jax.models.timm_layout import timm_shape
from gps_jax.vit_npz import save_vit_npz

# ---------------------------------------------------------------- the default tree


@pytest.mark.parametrize('family', list(SMALL))
def test_defaults_leave_the_tree_and_config_unchanged(family):
  fam = registry.family(family)
  defaults = jax.eval_shape(lambda: init(model_of(family)))
  explicit = {'adapter_dim': 0, 'vpt_tokens': 0, **({'vpt_deep': False} if family == 'vit' else {})}
  off = jax.eval_shape(lambda: init(model_of(family, **explicit)))
  shapes = {k: v.shape for k, v in tree_lib.flat(defaults).items()}
  assert shapes == {k: v.shape for k, v in tree_lib.flat(off).items()}
  assert not [k for k in shapes if ADDED.search(k)]
  variant = {'vit': 'Ti/16', 'swin': 'T', 'convnext': 'T'}[family]
  cfg = fam.config(variant, num_classes=3, image_size=224)
  assert {k: cfg[k] for k in explicit} == explicit
  on = fam.config(variant, num_classes=3, image_size=224, adapter_dim=8, vpt_tokens=0)
  assert fam.build(on).adapter_dim == 8


def test_vit_tree_with_defaults_is_the_vit_jax_layout():
  try:
    from test_vit import layout
  except ImportError:
    from tests.test_vit import layout
  d, p = TINY['hidden_size'], TINY['patch_size']
  want = layout(p, d, TINY['num_layers'], TINY['num_heads'], TINY['mlp_dim'],
                1 + (TINY['image_size'] // p) ** 2, TINY['num_classes'])  # fmt: skip
  got = jax.eval_shape(lambda: init(model_of('vit')))
  assert {k: v.shape for k, v in tree_lib.flat(got).items()} == want


# ---------------------------------------------------------------- loading


def stand_in_init(cfg, seed=0):
  """Random params of the model's shapes, standing in for its init where a load is meant to
  fail before using it (no compilation)."""
  shapes = jax.eval_shape(lambda: init(registry.build_model(cfg)))
  return tree_lib.unflat(random_params(shapes, seed))


@pytest.fixture
def base_file(tmp_path):
  base = random_params(jax.eval_shape(lambda: init(model_of('vit'))), seed=7)
  path = tmp_path / 'base.npz'
  save_vit_npz(path, tree_lib.unflat(base))
  return path, base


@pytest.mark.parametrize(
  'added',
  [dict(adapter_dim=4), dict(vpt_tokens=P), dict(vpt_tokens=P, vpt_deep=True, adapter_dim=2)],
)
def test_a_base_file_loads_into_a_model_with_added_modules(base_file, added):
  path, base = base_file
  cfg = {**SMALL['vit'], **added}
  fresh = init(registry.build_model(cfg), seed=9)
  loaded = flat_np(weights.load_checkpoint(path, cfg, init=fresh))
  fresh = flat_np(fresh)
  assert set(loaded) == set(fresh)
  for k, v in base.items():
    np.testing.assert_array_equal(loaded[k], v, err_msg=k)
  extra = set(loaded) - set(base)
  assert extra and all(ADDED.search(k) for k in extra)
  for k in extra:  # the model's fresh init, as given
    np.testing.assert_array_equal(loaded[k], fresh[k], err_msg=k)
  if added.get('vpt_deep'):  # without an init they come from the model's own (jitted) init
    again = flat_np(weights.load_checkpoint(path, cfg))
    assert {k: v.shape for k, v in again.items()} == {k: v.shape for k, v in fresh.items()}


def test_a_fine_tuned_adapter_file_loads_back_and_a_partial_one_fails(tmp_path):
  cfg = {**SMALL['vit'], 'adapter_dim': 4, 'vpt_tokens': P}
  shapes = jax.eval_shape(lambda: init(registry.build_model(cfg)))
  tuned = random_params(shapes, seed=11)
  path = tmp_path / 'tuned.npz'
  save_vit_npz(path, tree_lib.unflat(tuned))
  other = tree_lib.unflat(random_params(shapes, seed=12))  # an init the file must override
  loaded = flat_np(weights.load_checkpoint(path, cfg, init=other))
  assert set(loaded) == set(tuned)
  for k, v in tuned.items():
    np.testing.assert_array_equal(loaded[k], v, err_msg=k)
  # Half an adapter, or one of another width, is an error naming it.
  up = 'Transformer/encoderblock_1/adapter_mlp/up/kernel'
  save_vit_npz(path, tree_lib.unflat({k: v for k, v in tuned.items() if k != up}))
  with pytest.raises(ValueError, match=re.escape(f'missing {up} (4, 16) (the file has part of')):
    weights.load_checkpoint(path, cfg, init=other)
  save_vit_npz(path, tree_lib.unflat(tuned))
  wide = {**cfg, 'adapter_dim': 8}
  with pytest.raises(ValueError, match=r'wrong shape Transformer/encoderblock_0/adapter_attn/down'):
    weights.load_checkpoint(path, wide, init=stand_in_init(wide))
  # A model without adapters does not silently drop a file's adapters.
  plain = {**cfg, 'adapter_dim': 0}
  with pytest.raises(ValueError, match=r'unexpected Transformer/encoderblock_0/adapter_attn'):
    weights.load_checkpoint(path, plain, init=stand_in_init(plain))


def test_a_base_file_missing_an_ordinary_leaf_still_fails(base_file, tmp_path):
  _, base = base_file
  gone = 'Transformer/encoderblock_0/MlpBlock_3/Dense_0/bias'
  path = tmp_path / 'holed.npz'
  save_vit_npz(path, tree_lib.unflat({k: v for k, v in base.items() if k != gone}))
  cfg = {**SMALL['vit'], 'adapter_dim': 4, 'vpt_tokens': P}
  with pytest.raises(ValueError, match=r'\(1 problems\):\n  missing ' + re.escape(gone)):
    weights.load_checkpoint(path, cfg, init=stand_in_init(cfg))


def _to_torch(path, value):
  """A Flax leaf as timm stores it (the inverse of timm_layout.kernel_from_torch)."""
  if not path.endswith('/kernel'):
    return value
  return value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T


@pytest.mark.parametrize('family', ['swin', 'convnext'])
def test_a_timm_state_dict_loads_into_a_model_with_adapters(family):
  """A timm layout renames every backbone leaf; the adapters, which timm files never have,
  keep their fresh init instead of being looked up under a timm name."""
  layout = registry.family(family).timm
  base = random_params(jax.eval_shape(lambda: init(model_of(family))), seed=3)
  state = {layout.file_name(k): _to_torch(k, v) for k, v in base.items()}
  assert all(state[layout.file_name(k)].shape == timm_shape(k, v.shape) for k, v in base.items())
  model = model_of(family, adapter_dim=4)
  # The model's init: its adapters' own, the rest any values of the right shapes.
  fresh = tree_lib.unflat({**base, **fitting.fresh_added(model, rng=jax.random.PRNGKey(1))})
  loaded = flat_np(layout.params(state, model, 'timm file', init=fresh))
  for k, v in base.items():
    np.testing.assert_array_equal(loaded[k], v, err_msg=k)
  for k, v in flat_np(fresh).items():
    if ADDED.search(k):
      np.testing.assert_array_equal(loaded[k], v, err_msg=k)
  assert set(loaded) == set(flat_np(fresh))
