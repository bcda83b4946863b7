"""The ConvNeXt model against timm's PyTorch ConvNeXt (CPU) as the reference: its parameter
layout and counts, init, configs, drop-path and GPS roles, and the same logits and pre-logits
features as timm to 1e-4 in float32 on the same random weights (tests/timm_refs.py makes them).
Reading timm state dicts (array layout, heads, errors) is the job of
tests/test_convnext_checkpoints.py.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip('torch')
pytest.importorskip('safetensors')
timm_convnext = pytest.importorskip('timm.models.convnext')

from timm_refs import (  # noqa: E402
  CONVNEXT_SMALL as SMALL,
  CONVNEXT_SMALL_IMAGE as SMALL_IMAGE,
  TOL,
  convnext_images as images,
  convnext_small,
  convnext_timm_model as timm_model,
  flax_outputs,
  init_shapes as param_shapes,
  max_diff,
  through_safetensors as via_safetensors,
  timm_outputs,
)

from gps_jax import roles as roles_lib  # noqa: E402
from gps_jax import tree as tree_lib  # noqa: E402
from gps_jax.models import convnext as convnext_lib  # noqa: E402
from gps_jax.models import convnext_timm, layers  # noqa: E402
from gps_jax.models import swin as swin_lib  # noqa: E402
from gps_jax.models import vit as vit_lib  # noqa: E402
from gps_jax.models.convnext import (  # noqa: E402
  CONVNEXT_VARIANTS,
  ConvNeXt,
  build_convnext,
  convnext_config,
  convnext_drop_path_rates,
)
from gps_jax.models.convnext_timm import convnext_params_from_timm  # noqa: E402


@pytest.fixture(scope='module')
def small(tmp_path_factory):
  """A small timm ConvNeXt with 10 classes, its safetensors state dict and a Flax twin."""
  return convnext_small(tmp_path_factory.mktemp('convnext'))


def layout(depths, dims, classes, patch=4):
  """The documented parameter layout, written out by hand."""
  names = {
    'stem/conv/kernel': (patch, patch, 3, dims[0]),
    'stem/conv/bias': (dims[0],),
    'stem/norm/scale': (dims[0],),
    'stem/norm/bias': (dims[0],),
    'final_norm/scale': (dims[-1],),
    'final_norm/bias': (dims[-1],),
  }
  for i, (depth, c) in enumerate(zip(depths, dims)):
    if i:
      s = f'stages_{i}/downsample/'
      names[s + 'norm/scale'] = names[s + 'norm/bias'] = (dims[i - 1],)
      names[s + 'conv/kernel'] = (2, 2, dims[i - 1], c)
      names[s + 'conv/bias'] = (c,)
    for j in range(depth):
      b = f'stages_{i}/blocks_{j}/'
      names[b + 'conv_dw/kernel'] = (7, 7, 1, c)
      names[b + 'conv_dw/bias'] = (c,)
      names[b + 'norm/scale'] = names[b + 'norm/bias'] = (c,)
      names[b + 'mlp/fc1/kernel'] = (c, 4 * c)
      names[b + 'mlp/fc1/bias'] = (4 * c,)
      names[b + 'mlp/fc2/kernel'] = (4 * c, c)
      names[b + 'mlp/fc2/bias'] = (c,)
      names[b + 'gamma'] = (c,)
  if classes:
    names['head/kernel'] = (dims[-1], classes)
    names['head/bias'] = (classes,)
  return names


# --- layout and configs ---------------------------------------------------------------------


@pytest.mark.parametrize('classes', [10, 0])
def test_layout_matches_hand_written(classes):
  model = ConvNeXt(num_classes=classes, image_size=SMALL_IMAGE, **SMALL)
  assert param_shapes(model) == layout(SMALL['depths'], SMALL['dims'], classes)


def test_init_values():
  # Two stages keep XLA's compile of the random initialisers short.
  model = ConvNeXt(num_classes=5, image_size=32, depths=(1, 1), dims=(8, 16))
  init = jax.jit(functools.partial(model.init, train=False))
  variables = init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  for k, v in tree_lib.flat(variables['params']).items():
    if k.endswith('gamma'):
      np.testing.assert_array_equal(v, np.full(v.shape, 1e-6, np.float32))
    elif k.startswith('head/'):
      np.testing.assert_array_equal(v, 0.0)  # a fresh head predicts nothing
  logits, feats = jax.jit(functools.partial(model.apply, train=False))(
    variables, jnp.ones((2, 32, 32, 3))
  )
  assert logits.shape == (2, 5) and feats.shape == (2, 16)
  np.testing.assert_array_equal(logits, 0.0)


@pytest.mark.parametrize('variant', sorted(CONVNEXT_VARIANTS))
def test_variant_parameter_count_matches_timm(variant):
  arch = CONVNEXT_VARIANTS[variant]
  tmodel = timm_convnext.ConvNeXt(**arch, num_classes=1000, device='meta')
  theirs = {k: tuple(v.shape) for k, v in tmodel.state_dict().items()}
  ours = param_shapes(build_convnext(convnext_config(variant, num_classes=1000, image_size=224)))
  assert sum(math.prod(s) for s in ours.values()) == sum(math.prod(s) for s in theirs.values())
  assert len(ours) == len(theirs)
  layout = convnext_timm.CONVNEXT_TIMM
  named = {layout.file_name(k): layout.file_shape(k, s) for k, s in ours.items()}
  assert named == theirs


def test_config_and_build():
  cfg = convnext_config('B', num_classes=7, image_size=224)
  assert cfg.name == 'convnext' and cfg.variant == 'B'
  assert tuple(cfg.depths) == (3, 3, 27, 3) and tuple(cfg.dims) == (128, 256, 512, 1024)
  assert tuple(cfg.mean) == (0.485, 0.456, 0.406) and tuple(cfg.std) == (0.229, 0.224, 0.225)
  model = build_convnext(cfg)
  assert isinstance(model, ConvNeXt)
  assert (model.num_classes, model.image_size, model.depths) == (7, 224, (3, 3, 27, 3))
  assert model.drop_path_rate == 0.0 and model.layer_scale_init == 1e-6
  assert model.dtype == jnp.float32

  cfg = convnext_config('T', num_classes=3, image_size=64, drop_path_rate=0.1, dtype='bfloat16')
  model = build_convnext({**cfg.to_dict(), 'checkpoint': 'x.safetensors', 'reinit_head': True})
  assert model.dims == (96, 192, 384, 768) and model.depths == (3, 3, 9, 3)
  assert model.drop_path_rate == 0.1 and model.dtype == jnp.bfloat16

  # Explicit fields win over the variant; lists (e.g. from JSON) become tuples.
  model = build_convnext(dict(variant='T', depths=[1, 1, 2, 1], num_classes=2, image_size=32))
  assert model.depths == (1, 1, 2, 1) and model.dims == (96, 192, 384, 768)
  model = build_convnext(dict(name='convnext', num_classes=2, image_size=32, **SMALL))
  assert model.dims == SMALL['dims']

  with pytest.raises(ValueError, match='unknown ConvNeXt variant'):
    convnext_config('XL', num_classes=1, image_size=224)
  with pytest.raises(ValueError, match='unknown ConvNeXt config keys'):
    convnext_config('T', num_classes=1, image_size=224, patch_size=8)
  with pytest.raises(ValueError, match="name='convnext'"):
    build_convnext(dict(name='vit', variant='T', num_classes=1, image_size=224))
  with pytest.raises(ValueError, match='lacks'):
    build_convnext(dict(num_classes=1, image_size=224))


def test_wrong_image_shape():
  model = ConvNeXt(num_classes=2, image_size=32, **SMALL)
  with pytest.raises(ValueError, match='NHWC'):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 3, 32, 32)), train=False)


# --- equality with timm ---------------------------------------------------------------------


def test_small_matches_timm(small):
  tmodel, _, model, params = small
  x = images(3, SMALL_IMAGE)
  t_logits, t_feats = timm_outputs(tmodel, x)
  logits, feats = flax_outputs(model, params, x)
  assert np.std(t_logits) > 0.1 and np.std(t_feats) > 0.1  # not trivially equal
  assert max_diff(feats, t_feats) <= TOL
  assert max_diff(logits, t_logits) <= TOL


def test_small_matches_timm_other_image_size(small):
  # The same weights on another resolution (96 = 3 x 32): nothing depends on image_size.
  tmodel, sd, _, _ = small
  model = ConvNeXt(num_classes=10, image_size=96, **SMALL)
  x = images(1, 96, seed=1)
  t_logits, t_feats = timm_outputs(tmodel, x)
  logits, feats = flax_outputs(model, convnext_params_from_timm(sd, model), x)
  assert max_diff(feats, t_feats) <= TOL and max_diff(logits, t_logits) <= TOL


# --- drop-path ------------------------------------------------------------------------------


def test_drop_path_rates_match_timm():
  depths = (2, 1, 3, 2)
  tmodel = timm_convnext.ConvNeXt(
    depths=depths, dims=(8, 8, 8, 8), num_classes=0, drop_path_rate=0.3, device='meta'
  )
  theirs = [
    [getattr(block.drop_path, 'drop_prob', 0.0) for block in stage.blocks]
    for stage in tmodel.stages
  ]
  ours = convnext_drop_path_rates(0.3, depths)
  assert [len(r) for r in ours] == list(depths)
  np.testing.assert_allclose(sum(ours, []), sum(theirs, []), atol=1e-7)
  assert convnext_drop_path_rates(0.0, depths) == [[0.0] * d for d in depths]
  # shared with the other backbones, not copied
  assert convnext_drop_path_rates is layers.drop_path_rates is swin_lib.drop_path_rates
  assert convnext_lib.drop_path is vit_lib.drop_path is swin_lib.drop_path is layers.drop_path
  assert convnext_lib.Mlp is swin_lib.Mlp is layers.Mlp


def test_train_mode_drop_path(small):
  _, sd, _, _ = small
  model = ConvNeXt(num_classes=10, image_size=SMALL_IMAGE, drop_path_rate=0.5, **SMALL)
  params = convnext_params_from_timm(sd, model)
  x = jnp.asarray(images(4, SMALL_IMAGE, seed=4))
  apply = jax.jit(model.apply, static_argnames='train')
  eval_logits, _ = apply({'params': params}, x, train=False)
  train = lambda seed: apply(
    {'params': params}, x, train=True, rngs={'dropout': jax.random.PRNGKey(seed)}
  )[0]
  a, a2, b = train(0), train(0), train(1)
  np.testing.assert_array_equal(a, a2)  # the 'dropout' rng alone decides
  assert max_diff(a, eval_logits) > 1e-3
  assert max_diff(a, b) > 1e-3
  with pytest.raises(Exception, match='dropout'):
    jax.eval_shape(functools.partial(model.apply, train=True), {'params': params}, x)  # no rng

  # Without drop-path, train mode is eval mode and needs no rng.
  model0 = ConvNeXt(num_classes=10, image_size=SMALL_IMAGE, **SMALL)
  logits0 = jax.jit(functools.partial(model0.apply, train=True))({'params': params}, x)[0]
  np.testing.assert_allclose(logits0, eval_logits, rtol=0, atol=1e-6)


# --- GPS roles ------------------------------------------------------------------------------


def test_gps_roles(small):
  _, _, _, params = small
  roles = tree_lib.flat(roles_lib.assign_roles(params))
  for c, i in ((8, 0), (16, 1), (24, 2), (32, 3)):
    dw = roles[f'stages_{i}/blocks_0/conv_dw/kernel']
    assert (dw.role, dw.shape, dw.fan_in_ndim) == ('select', (7, 7, 1, c), 3)
    assert dw.num_neurons == c and dw.fan_in == 49
  assert roles['stem/conv/kernel'].fan_in == 4 * 4 * 3
  assert roles['stages_2/downsample/conv/kernel'].fan_in == 2 * 2 * 16
  assert roles['stages_2/blocks_1/mlp/fc1/kernel'].fan_in == 24
  assert roles['stages_2/blocks_1/mlp/fc2/kernel'].fan_in == 96

  for path, r in roles.items():
    parts = path.split('/')
    if parts[0] == 'head':
      want = 'train'
    elif any('norm' in p for p in parts[:-1]):
      want = 'freeze'  # stem/norm, downsample/norm, blocks' norm and final_norm
    elif parts[-1] in ('bias', 'gamma'):
      want = 'train'
    else:
      assert parts[-1] == 'kernel', path
      want = 'select'
    assert r.role == want, (path, r.role)
  assert roles['final_norm/scale'].role == 'freeze'
  assert roles['stages_0/blocks_0/gamma'].role == 'train'

  # Neurons over all selected leaves: the stem conv (8), each downsample conv (its out
  # channels: 16 + 24 + 32) and per block conv_dw C + fc1 4C + fc2 C = 6C (blocks of width
  # 8, 16, 24, 24, 32).
  selected = roles_lib.leaves_with_role(roles_lib.assign_roles(params), 'select')
  assert len(selected) == 1 + 3 + 3 * 5
  assert sum(r.num_neurons for r in selected.values()) == 704
  assert 704 == 8 + (16 + 24 + 32) + 6 * (8 + 16 + 24 + 24 + 32)


# --- ConvNeXt-B -----------------------------------------------------------------------------


@pytest.mark.slow
def test_convnext_base_matches_timm(tmp_path):
  arch = CONVNEXT_VARIANTS['B']
  assert arch == dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024))
  tmodel = timm_model(arch['depths'], arch['dims'], num_classes=1000, seed=2)
  sd = via_safetensors(tmodel, tmp_path / 'convnext_base.safetensors')
  model = build_convnext(convnext_config('B', num_classes=1000, image_size=224))
  params = convnext_params_from_timm(sd, model)
  del sd
  n_ours = sum(v.size for v in jax.tree.leaves(params))
  n_timm = sum(p.numel() for p in tmodel.parameters())
  assert n_ours == n_timm == 88_591_464
  x = images(1, 224, seed=5)
  t_logits, t_feats = timm_outputs(tmodel, x)
  logits, feats = flax_outputs(model, params, x)
  assert np.std(t_logits) > 0.1
  assert max_diff(feats, t_feats) <= TOL
  assert max_diff(logits, t_logits) <= TOL
