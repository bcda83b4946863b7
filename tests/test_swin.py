"""Tests of gps_jax.models.swin against timm's PyTorch SwinTransformer (the reference) on CPU.

timm models get random, non-trivial values in every parameter (norms, relative position
tables and biases included), their state dicts go through a ``.safetensors`` file (buffers
included) and are converted; logits and pre-logits features must agree to 1e-4 in float32.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')
timm = pytest.importorskip('timm')
safetensors_torch = pytest.importorskip('safetensors.torch')
safetensors_numpy = pytest.importorskip('safetensors.numpy')

from timm.layers import calculate_drop_path_rates, resize_rel_pos_bias_table  # noqa: E402
from timm.models import swin_transformer as timm_swin  # noqa: E402

from gps_jax.models.swin import (  # noqa: E402
  SWIN_VARIANTS,
  SwinTransformer,
  build_swin,
  drop_path_rates,
  swin_config,
)
from gps_jax.models.swin_timm import (  # noqa: E402
  resize_relative_position_table,
  swin_params_from_timm,
)
from gps_jax.roles import GPS_RULES, assign_roles  # noqa: E402
from gps_jax.tree import flat  # noqa: E402

TOL = 1e-4
# Small: shifted windows in stage 0 (resolution 8 > window 4), none in stage 1 (4 <= 4).
SMALL = dict(
  image_size=32, patch_size=4, embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=4
)
# Padded: resolutions 10 -> 5 -> 3 with window 4: padding to 12 and 8 in the shifted blocks,
# an odd resolution for PatchMerging and a window clamped to 3 (5x5 table) in stage 2.
PADDED = dict(
  image_size=40, patch_size=4, embed_dim=16, depths=(2, 2, 2), num_heads=(2, 4, 8), window_size=4
)


def timm_model(cfg, num_classes=10, seed=0, drop_path_rate=0.3, **kw):
  """A timm SwinTransformer of ``cfg`` in eval mode with every parameter random (drop-path
  is set, as in flax_model, to check that evaluation ignores it)."""
  m = timm_swin.SwinTransformer(
    img_size=cfg['image_size'],
    patch_size=cfg['patch_size'],
    embed_dim=cfg['embed_dim'],
    depths=cfg['depths'],
    num_heads=cfg['num_heads'],
    window_size=cfg['window_size'],
    num_classes=num_classes,
    drop_path_rate=drop_path_rate,
    **kw,
  )
  randomize(m, seed)
  return m.eval()


def randomize(module, seed):
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      r = torch.randn(p.shape, generator=gen)
      if 'relative_position_bias_table' in name:
        p.copy_(0.5 * r)
      elif p.ndim == 1 and name.endswith('weight'):  # LayerNorm scales
        p.copy_(1.0 + 0.2 * r)
      elif p.ndim == 1:  # biases
        p.copy_(0.1 * r)
      else:  # Linear (out, in) / conv (out, in, kh, kw): unit-variance outputs
        p.copy_(r / math.sqrt(p[0].numel()))


def through_safetensors(module, tmp_path, name='model.safetensors'):
  """state_dict() plus every buffer (relative_position_index, attn_mask are non-persistent in
  timm 1.0) -> .safetensors -> NumPy. Tensors are cloned: safetensors refuses shared ones."""
  tensors = dict(module.state_dict())
  tensors.update({k: b for k, b in module.named_buffers() if b is not None})
  tensors = {k: v.detach().clone().contiguous() for k, v in tensors.items()}
  path = str(tmp_path / name)
  safetensors_torch.save_file(tensors, path)
  return safetensors_numpy.load_file(path)


def flax_model(cfg, num_classes=10, drop_path_rate=0.3, **kw):
  return SwinTransformer(
    drop_path_rate=drop_path_rate,
    num_classes=num_classes,
    image_size=cfg['image_size'],
    patch_size=cfg['patch_size'],
    embed_dim=cfg['embed_dim'],
    depths=cfg['depths'],
    num_heads=cfg['num_heads'],
    window_size=cfg['window_size'],
    **kw,
  )


def images(batch, size, seed=1):
  return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def timm_outputs(module, x):
  with torch.no_grad():
    feats = module.forward_head(module.forward_features(x), pre_logits=True)
    return module(x).numpy(), feats.numpy()


@functools.lru_cache(maxsize=None)
def jitted_apply(model, train=False):
  """One compiled apply per (model, train); eager JAX would compile every op separately."""
  return jax.jit(functools.partial(model.apply, train=train))


def flax_outputs(model, params, x):
  """(logits, features) of ``model`` in eval mode on torch NCHW images."""
  nhwc = x.numpy().transpose(0, 2, 3, 1) if isinstance(x, torch.Tensor) else x
  with jax.default_matmul_precision('float32'):
    return jitted_apply(model)({'params': params}, jnp.asarray(nhwc))


def max_diff(a, b):
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def shapes(tree):
  return {k: tuple(v.shape) for k, v in flat(tree).items()}


def init_shapes_tree(model):
  """The model's params as jax.ShapeDtypeStructs (model.init itself is slow on CPU)."""
  x = jnp.zeros((1, model.image_size, model.image_size, 3))
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False)['params'])


def init_shapes(model):
  return shapes(init_shapes_tree(model))


# ----------------------------------------------------------------------------------------------


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


def test_num_classes_zero(tmp_path):
  ref = timm_model(SMALL, num_classes=0)
  state = through_safetensors(ref, tmp_path)
  assert not any(k.startswith('head') for k in state)
  model = flax_model(SMALL, num_classes=0)
  params = swin_params_from_timm(state, model)
  assert 'head' not in params
  x = images(2, 32)
  logits, feats = flax_outputs(model, params, x)
  assert logits is None
  with torch.no_grad():
    assert max_diff(feats, ref(x).numpy()) <= TOL  # timm returns the pooled features
  # A checkpoint with a head loads into a headless model too, the head dropped.
  headed = timm_model(SMALL, num_classes=10)
  params = swin_params_from_timm(through_safetensors(headed, tmp_path, 'h.safetensors'), model)
  assert 'head' not in params
  _, feats = flax_outputs(model, params, x)
  assert max_diff(feats, timm_outputs(headed, x)[1]) <= TOL


def test_head_of_other_class_count_is_dropped(tmp_path):
  ref = timm_model(SMALL, num_classes=10)
  state = through_safetensors(ref, tmp_path)
  model = flax_model(SMALL, num_classes=7)
  params = swin_params_from_timm(state, model)
  assert params['head']['kernel'].shape == (32, 7) and params['head']['bias'].shape == (7,)
  assert not np.any(params['head']['kernel']) and not np.any(params['head']['bias'])
  x = images(2, 32)
  logits, feats = flax_outputs(model, params, x)
  assert not np.any(np.asarray(logits))
  assert max_diff(feats, timm_outputs(ref, x)[1]) <= TOL
  # A headless checkpoint gives a headed model its fresh zero head as well.
  headless = {k: v for k, v in state.items() if not k.startswith('head.')}
  params = swin_params_from_timm(headless, flax_model(SMALL, num_classes=10))
  assert not np.any(params['head']['kernel']) and params['head']['bias'].shape == (10,)


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


@pytest.mark.parametrize('new_window', [2, 3, 6, 7])
def test_resize_table_matches_timm(new_window):
  table = np.random.default_rng(0).normal(size=(49, 3)).astype(np.float32)  # window 4
  ours = resize_relative_position_table(table, new_window)
  size = (2 * new_window - 1) ** 2
  theirs = resize_rel_pos_bias_table(
    torch.from_numpy(table), new_window_size=(new_window, new_window), new_bias_shape=(size, 3)
  ).numpy()
  assert ours.shape == theirs.shape == (size, 3) and ours.dtype == np.float32
  assert max_diff(ours, theirs) <= 1e-5
  np.testing.assert_array_equal(resize_relative_position_table(table, 4), table)


@pytest.mark.parametrize('new_window', [2, 6])
def test_resized_checkpoint_matches_timm(new_window, tmp_path):
  """A window-4 checkpoint loaded into a window-`new_window` model, against timm's own
  loading path (checkpoint_filter_fn resizes the tables, then a strict load_state_dict)."""
  src = timm_model(SMALL)
  state = through_safetensors(src, tmp_path)
  cfg = dict(SMALL, window_size=new_window)
  ref = timm_model(cfg, seed=5)
  filtered = timm_swin.checkpoint_filter_fn({k: torch.from_numpy(v) for k, v in state.items()}, ref)
  ref.load_state_dict(filtered, strict=True)
  model = flax_model(cfg)
  params = swin_params_from_timm(state, model)
  table = params['layers_0']['blocks_1']['attn']['relative_position_bias_table']
  assert table.shape == ((2 * new_window - 1) ** 2, 2)
  x = images(2, 32)
  logits, feats = flax_outputs(model, params, x)
  ref_logits, ref_feats = timm_outputs(ref, x)
  assert max_diff(logits, ref_logits) <= TOL
  assert max_diff(feats, ref_feats) <= TOL


def test_errors_name_every_bad_key(tmp_path):
  state = through_safetensors(timm_model(SMALL), tmp_path)
  del state['layers.0.blocks.1.attn.qkv.weight']
  state['layers.0.blocks.1.attn.extra.weight'] = np.zeros((3, 3), np.float32)
  state['layers.1.downsample.reduction.weight'] = np.zeros((32, 60), np.float32)
  state['layers.1.blocks.0.attn.relative_position_bias_table'] = np.zeros((49, 3), np.float32)
  state['norm.bias'] = np.zeros((31,), np.float32)
  with pytest.raises(ValueError) as err:
    swin_params_from_timm(state, flax_model(SMALL))
  msg = str(err.value)
  assert '5 problems' in msg
  for name in (
    'missing layers.0.blocks.1.attn.qkv.weight',
    'unexpected layers.0.blocks.1.attn.extra.weight',
    'wrong shape layers.1.downsample.reduction.weight',
    'wrong shape layers.1.blocks.0.attn.relative_position_bias_table',
    'wrong shape norm.bias',
  ):
    assert name in msg


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
