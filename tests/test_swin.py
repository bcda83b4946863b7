"""The Swin Transformer model against timm's PyTorch SwinTransformer (CPU) as the reference:
its parameter layout and counts, configs, drop-path and GPS roles, and the same logits and
pre-logits features as timm to 1e-4 in float32 on the same random weights (norms, relative
position tables and biases included; tests/timm_refs.py makes them), with and without padded
windows. Reading timm state dicts (heads, window resizes, errors) is the job of
tests/test_swin_checkpoints.py.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip('torch')
pytest.importorskip('safetensors')
timm = pytest.importorskip('timm')

from timm.layers import calculate_drop_path_rates  # noqa: E402
from timm_refs import (  # noqa: E402
  SWIN_PADDED as PADDED,
  SWIN_SMALL as SMALL,
  TOL,
  flax_outputs,
  init_shapes,
  init_shapes_tree,
  jitted_apply,
  max_diff,
  randomize_swin as randomize,
  shapes,
  swin_flax_model as flax_model,
  swin_images as images,
  swin_timm_model as timm_model,
  through_safetensors,
  timm_outputs,
)

from gps_jax.models.swin import (  # noqa: E402
  SWIN_VARIANTS,
  SwinTransformer,
  build_swin,
  drop_path_rates,
  swin_config,
)
from gps_jax.models.swin_timm import swin_params_from_timm  # noqa: E402
from gps_jax.roles import GPS_RULES, assign_roles  # noqa: E402
from gps_jax.tree import flat  # noqa: E402


def test_parameter_layout():
  """The documented names and shapes, written out by hand for SMALL."""
  d, p = 16, 4
  want = {
    'patch_embed/proj/kernel': (p, p, 3, d),
    'patch_embed/proj/bias': (d,),
    'patch_embed/norm/scale': (d,),
    'patch_embed/norm/bias': (d,),
    'layers_1/downsample/norm/scale': (4 * d,),
    'layers_1/downsample/norm/bias': (4 * d,),
    'layers_1/downsample/reduction/kernel': (4 * d, 2 * d),
    'norm/scale': (2 * d,),
    'norm/bias': (2 * d,),
    'head/kernel': (2 * d, 10),
    'head/bias': (10,),
  }
  # stage 0: resolution 8, window 4 -> (7*7, 2); stage 1: resolution 4 = window -> (7*7, 4).
  for i, (c, heads) in enumerate(((d, 2), (2 * d, 4))):
    for j in range(2):
      b = f'layers_{i}/blocks_{j}/'
      for n in ('norm1', 'norm2'):
        want[b + n + '/scale'] = want[b + n + '/bias'] = (c,)
      want[b + 'attn/qkv/kernel'] = (c, 3 * c)
      want[b + 'attn/qkv/bias'] = (3 * c,)
      want[b + 'attn/relative_position_bias_table'] = (49, heads)
      want[b + 'attn/proj/kernel'] = (c, c)
      want[b + 'attn/proj/bias'] = (c,)
      want[b + 'mlp/fc1/kernel'] = (c, 4 * c)
      want[b + 'mlp/fc1/bias'] = (4 * c,)
      want[b + 'mlp/fc2/kernel'] = (4 * c, c)
      want[b + 'mlp/fc2/bias'] = (c,)
  assert init_shapes(flax_model(SMALL)) == want
  # The head starts at zero, like ViT's.
  model = flax_model(SMALL)
  head = jax.jit(lambda r: model.init(r, jnp.zeros((1, 32, 32, 3)), train=False)['params']['head'])(
    jax.random.PRNGKey(0)
  )
  assert not np.any(head['kernel']) and not np.any(head['bias'])
  # A clamped window gets a table for the clamped window: PADDED stage 2 (resolution 3).
  padded = init_shapes(flax_model(PADDED))
  assert padded['layers_2/blocks_0/attn/relative_position_bias_table'] == (25, 8)
  assert padded['layers_1/blocks_1/attn/relative_position_bias_table'] == (49, 4)


@pytest.mark.parametrize('cfg', [SMALL, PADDED], ids=['small', 'padded'])
def test_matches_timm(cfg, tmp_path):
  ref = timm_model(cfg)
  state = through_safetensors(ref, tmp_path)
  assert any(k.endswith('attn_mask') for k in state)  # shifted blocks' buffers were saved
  assert any(k.endswith('relative_position_index') for k in state)
  model = flax_model(cfg)
  params = swin_params_from_timm(state, model)
  assert shapes(params) == init_shapes(model)
  x = images(2, cfg['image_size'])
  logits, feats = flax_outputs(model, params, x)
  ref_logits, ref_feats = timm_outputs(ref, x)
  assert logits.shape == (2, 10) and feats.shape == (2, model.num_features)
  assert max_diff(logits, ref_logits) <= TOL
  assert max_diff(feats, ref_feats) <= TOL
  # Non-trivial: the outputs differ from sample to sample and are O(1).
  assert np.std(ref_logits) > 0.1


@pytest.mark.slow
def test_swin_b_224_matches_timm(tmp_path):
  ref = timm.create_model('swin_base_patch4_window7_224', pretrained=False, num_classes=1000)
  randomize(ref, 0)
  ref.eval()
  state = through_safetensors(ref, tmp_path)
  model = build_swin(swin_config('B', num_classes=1000, image_size=224))
  params = swin_params_from_timm(state, model)
  ours = sum(math.prod(s) for s in shapes(params).values())
  theirs = sum(p.numel() for p in ref.parameters())
  assert ours == theirs == 87_768_224
  x = images(1, 224)
  logits, feats = flax_outputs(model, params, x)
  ref_logits, ref_feats = timm_outputs(ref, x)
  assert max_diff(logits, ref_logits) <= TOL
  assert max_diff(feats, ref_feats) <= TOL


def test_parameter_count_matches_timm_swin_t():
  model = build_swin(swin_config('T', num_classes=1000, image_size=224))
  ours = sum(math.prod(s) for s in init_shapes(model).values())
  ref = timm.create_model('swin_tiny_patch4_window7_224', pretrained=False, device='meta')
  assert ours == sum(p.numel() for p in ref.parameters()) == 28_288_354


def test_drop_path_rates_match_timm():
  for rate, depths in ((0.1, (2, 2, 18, 2)), (0.3, (2, 2)), (0.0, (1, 3)), (0.2, (1,))):
    ours = drop_path_rates(rate, depths)
    theirs = calculate_drop_path_rates(rate, list(depths), stagewise=True)
    assert [len(s) for s in ours] == list(depths)
    np.testing.assert_allclose(sum(ours, []), sum(theirs, []), atol=1e-7)


def test_drop_path_uses_dropout_rng(tmp_path):
  """Drop-path is active in train mode only, drawing from the 'dropout' rng; eval mode (the
  other tests, all at drop_path_rate 0.3) matches timm and needs no rng."""
  ref = timm_model(SMALL)
  model = flax_model(SMALL)
  params = swin_params_from_timm(through_safetensors(ref, tmp_path), model)
  x = jnp.asarray(images(2, 32).numpy().transpose(0, 2, 3, 1))
  train = jitted_apply(model, train=True)
  _, feats_a = train({'params': params}, x, rngs={'dropout': jax.random.PRNGKey(2)})
  _, feats_a2 = train({'params': params}, x, rngs={'dropout': jax.random.PRNGKey(2)})
  _, feats_b = train({'params': params}, x, rngs={'dropout': jax.random.PRNGKey(3)})
  _, feats_eval = flax_outputs(model, params, x)
  np.testing.assert_array_equal(feats_a, feats_a2)
  assert max_diff(feats_a, feats_b) > 1e-3
  assert max_diff(feats_a, feats_eval) > 1e-3
  with pytest.raises(Exception, match='dropout'):
    jax.eval_shape(functools.partial(model.apply, train=True), {'params': params}, x)
  # The rates are timm's: 0 for the first block, 0.3 for the last one.
  np.testing.assert_allclose(sum(drop_path_rates(0.3, SMALL['depths']), []), [0, 0.1, 0.2, 0.3])


def test_config_and_build():
  cfg = swin_config('B', num_classes=5, image_size=224)
  assert cfg.name == 'swin' and cfg.variant == 'B'
  assert tuple(cfg.mean) == (0.485, 0.456, 0.406) and tuple(cfg.std) == (0.229, 0.224, 0.225)
  model = build_swin(cfg)
  assert model == SwinTransformer(
    num_classes=5,
    image_size=224,
    embed_dim=128,
    depths=(2, 2, 18, 2),
    num_heads=(4, 8, 16, 32),
    window_size=7,
    patch_size=4,
    mlp_ratio=4.0,
    drop_path_rate=0.0,
    dtype=jnp.float32,
  )
  assert model.num_features == 1024
  assert set(SWIN_VARIANTS) == {'T', 'S', 'B', 'L'}
  small = build_swin(
    swin_config(
      'T',
      num_classes=3,
      image_size=32,
      window_size=4,
      embed_dim=16,
      depths=[2, 2],
      num_heads=[2, 4],
      drop_path_rate=0.1,
    )
  )
  assert small.depths == (2, 2) and small.num_heads == (2, 4) and small.drop_path_rate == 0.1
  hash(small)
  with pytest.raises(ValueError, match='unknown Swin config keys'):
    swin_config('B', num_classes=5, image_size=224, hidden_size=3)
  with pytest.raises(ValueError, match='unknown Swin variant'):
    swin_config('XL', num_classes=5, image_size=224)
  with pytest.raises(ValueError, match="name='swin'"):
    build_swin(dict(cfg.to_dict(), name='vit'))
  # A bfloat16 compute dtype keeps float32 params and gives bfloat16 outputs.
  bf16 = build_swin(swin_config('T', num_classes=3, image_size=32, window_size=4, dtype='bfloat16'))
  x = jnp.zeros((2, 32, 32, 3))
  params = init_shapes_tree(bf16)
  assert {v.dtype for v in flat(params).values()} == {jnp.dtype('float32')}
  logits, feats = jax.eval_shape(functools.partial(bf16.apply, train=False), {'params': params}, x)
  assert logits.dtype == feats.dtype == jnp.bfloat16 and feats.shape == (2, 768)
  with pytest.raises(ValueError, match='NHWC images'):
    small.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)), train=False)


def test_gps_roles_and_fan_in():
  roles = flat(assign_roles(init_shapes_tree(flax_model(SMALL)), GPS_RULES))
  qkv = roles['layers_0/blocks_0/attn/qkv/kernel']
  assert qkv.role == 'select' and qkv.fan_in == 16 and qkv.num_neurons == 48
  red = roles['layers_1/downsample/reduction/kernel']
  assert red.role == 'select' and red.fan_in == 64 and red.num_neurons == 32
  emb = roles['patch_embed/proj/kernel']
  assert emb.role == 'select' and emb.fan_in == 4 * 4 * 3 and emb.num_neurons == 16
  for path, r in roles.items():
    if '/norm' in path or path.startswith('norm/') or '/downsample/norm/' in path:
      assert r.role == 'freeze', path
    elif path.startswith('head/') or path.endswith('/bias'):
      assert r.role == 'train', path
