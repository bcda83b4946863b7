"""Tests of gps_jax.models.vit against a hand-written layout and a plain NumPy forward pass."""

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gps_jax.models import VIT_VARIANTS, ViT, build_vit, vit_config

TINY = dict(
  num_classes=10, patch_size=4, hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64, image_size=16
)


def flat(tree, prefix=''):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict) or hasattr(v, 'items'):
      out.update(flat(v, f'{prefix}{k}/'))
    else:
      out[f'{prefix}{k}'] = tuple(v.shape)
  return out


def layout(p, d, layers, heads, mlp, tokens, classes, rep=None):
  """The vit_jax parameter layout, written out by hand from its documentation."""
  hd = d // heads
  names = {
    'embedding/kernel': (p, p, 3, d),
    'embedding/bias': (d,),
    'cls': (1, 1, d),
    'Transformer/posembed_input/pos_embedding': (1, tokens, d),
    'Transformer/encoder_norm/scale': (d,),
    'Transformer/encoder_norm/bias': (d,),
  }
  for i in range(layers):
    b = f'Transformer/encoderblock_{i}/'
    for ln in ('LayerNorm_0', 'LayerNorm_2'):
      names[b + ln + '/scale'] = (d,)
      names[b + ln + '/bias'] = (d,)
    for qkv in ('query', 'key', 'value'):
      names[b + f'MultiHeadDotProductAttention_1/{qkv}/kernel'] = (d, heads, hd)
      names[b + f'MultiHeadDotProductAttention_1/{qkv}/bias'] = (heads, hd)
    names[b + 'MultiHeadDotProductAttention_1/out/kernel'] = (heads, hd, d)
    names[b + 'MultiHeadDotProductAttention_1/out/bias'] = (d,)
    names[b + 'MlpBlock_3/Dense_0/kernel'] = (d, mlp)
    names[b + 'MlpBlock_3/Dense_0/bias'] = (mlp,)
    names[b + 'MlpBlock_3/Dense_1/kernel'] = (mlp, d)
    names[b + 'MlpBlock_3/Dense_1/bias'] = (d,)
  last = d
  if rep:
    names.update({'pre_logits/kernel': (d, rep), 'pre_logits/bias': (rep,)})
    last = rep
  if classes:
    names.update({'head/kernel': (last, classes), 'head/bias': (classes,)})
  return names


def shapes_of(model):
  s = model.image_size
  return jax.eval_shape(
    lambda r: model.init(r, jnp.zeros((1, s, s, 3)), train=False), jax.random.PRNGKey(0)
  )['params']


def random_params(model, seed=0):
  """The model's param tree (shapes via eval_shape) filled with random values, so that no
  parameter is zero; LayerNorm scales are around 1."""
  params = shapes_of(model)
  rng = np.random.default_rng(seed)

  def fill(path, x):
    name = jax.tree_util.keystr(path)
    v = rng.normal(0, 0.3, x.shape)
    return jnp.asarray(1.0 + v if "'scale'" in name else v, jnp.float32)

  return jax.tree_util.tree_map_with_path(fill, params)


# ---------------------------------------------------------------- NumPy reference forward
def np_layernorm(x, p):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-6) * p['scale'] + p['bias']


_erf = np.vectorize(math.erf)


def np_gelu(x):
  return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def np_forward(params, images, patch, num_layers, rep=False, branch_scale=None):
  """ViT forward in float64 NumPy. branch_scale[(layer, 0|1)] multiplies the attention (0)
  or MLP (1) residual branch of a block (default 1)."""
  P = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  branch_scale = branch_scale or {}
  b, h, w, c = images.shape
  x = images.astype(np.float64).reshape(b, h // patch, patch, w // patch, patch, c)
  x = x.transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // patch) * (w // patch), patch * patch * c)
  kernel = P['embedding']['kernel']
  x = x @ kernel.reshape(-1, kernel.shape[-1]) + P['embedding']['bias']
  cls = np.broadcast_to(P['cls'], (b, 1, x.shape[-1]))
  x = np.concatenate([cls, x], axis=1) + P['Transformer']['posembed_input']['pos_embedding']
  for i in range(num_layers):
    blk = P['Transformer'][f'encoderblock_{i}']
    att = blk['MultiHeadDotProductAttention_1']
    y = np_layernorm(x, blk['LayerNorm_0'])
    q, k, v = (
      np.einsum('bnd,dhk->bnhk', y, att[n]['kernel']) + att[n]['bias']
      for n in ('query', 'key', 'value')
    )
    logits = np.einsum('bqhk,bshk->bhqs', q, k) / math.sqrt(q.shape[-1])
    a = np.exp(logits - logits.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    o = np.einsum('bhqs,bshk->bqhk', a, v)
    y = np.einsum('bqhk,hkd->bqd', o, att['out']['kernel']) + att['out']['bias']
    x = x + branch_scale.get((i, 0), 1.0) * y
    mlp = blk['MlpBlock_3']
    y = np_layernorm(x, blk['LayerNorm_2'])
    y = np_gelu(y @ mlp['Dense_0']['kernel'] + mlp['Dense_0']['bias'])
    y = y @ mlp['Dense_1']['kernel'] + mlp['Dense_1']['bias']
    x = x + branch_scale.get((i, 1), 1.0) * y
  feats = np_layernorm(x, P['Transformer']['encoder_norm'])[:, 0]
  if rep:
    feats = np.tanh(feats @ P['pre_logits']['kernel'] + P['pre_logits']['bias'])
  logits = feats @ P['head']['kernel'] + P['head']['bias'] if 'head' in P else None
  return logits, feats


@functools.lru_cache(maxsize=None)
def _jitted_apply(model, train):
  return jax.jit(lambda p, x, r: model.apply({'params': p}, x, train=train, rngs=r))


def apply(model, params, x, train, seed=None):
  """Jitted model.apply, compiled once per (model, train): eager Flax is slow on CPU."""
  rngs = {} if seed is None else {'dropout': jax.random.PRNGKey(seed)}
  return jax.device_get(_jitted_apply(model, train)(params, x, rngs))


def images(n=3, seed=1, size=16):
  return np.random.default_rng(seed).normal(size=(n, size, size, 3)).astype(np.float32)


# ---------------------------------------------------------------- tests
def test_tiny_layout():
  model = ViT(**TINY)
  assert flat(shapes_of(model)) == layout(4, 32, 2, 2, 64, 17, 10)


def test_tiny_layout_pre_logits_and_headless():
  assert flat(shapes_of(ViT(**TINY, representation_size=24))) == layout(
    4, 32, 2, 2, 64, 17, 10, rep=24
  )
  assert flat(shapes_of(ViT(**{**TINY, 'num_classes': 0}))) == layout(4, 32, 2, 2, 64, 17, 0)


def test_b16_layout_and_param_count():
  model = build_vit(vit_config('B/16', num_classes=1000, image_size=224))
  shapes = flat(shapes_of(model))
  assert shapes == layout(16, 768, 12, 12, 3072, 197, 1000)
  total = sum(math.prod(s) for s in shapes.values())
  no_head = sum(math.prod(s) for k, s in shapes.items() if not k.startswith('head/'))
  assert (total, no_head) == (86_567_656, 85_798_656)


def test_variants_and_config():
  assert VIT_VARIANTS['B/16'] == dict(
    hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072, patch_size=16
  )
  assert VIT_VARIANTS['Ti/4']['patch_size'] == 4 and VIT_VARIANTS['S/32']['hidden_size'] == 384
  assert VIT_VARIANTS['L/16']['num_layers'] == 24
  cfg = vit_config('S/16', num_classes=7, image_size=32, drop_path_rate=0.1)
  assert cfg.name == 'vit' and tuple(cfg.mean) == (0.5, 0.5, 0.5) and tuple(cfg.std) == (0.5,) * 3
  m = build_vit(cfg)
  assert (m.hidden_size, m.num_heads, m.patch_size, m.num_classes, m.drop_path_rate) == (
    384,
    6,
    16,
    7,
    0.1,
  )
  explicit = build_vit(dict(name='vit', **TINY, mean=(0.1, 0.2, 0.3)))
  assert explicit == ViT(**TINY)
  with pytest.raises(ValueError, match='unknown ViT config keys'):
    vit_config('B/16', num_classes=1, image_size=224, drop_pth=0.1)
  with pytest.raises(ValueError, match='unknown ViT variant'):
    vit_config('X/16', num_classes=1, image_size=224)
  with pytest.raises(ValueError, match='lacks'):
    build_vit(dict(name='vit', num_classes=3))


def test_wrong_image_size_is_clear_error():
  model = ViT(**TINY)
  with pytest.raises(ValueError, match='16, 16, 3'):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 20, 20, 3)), train=False)


@pytest.mark.parametrize('rep', [None, 24])
def test_matches_numpy_reference(rep):
  model = ViT(**TINY, representation_size=rep)
  params = random_params(model)
  x = images()
  logits, feats = apply(model, params, x, False)
  ref_logits, ref_feats = np_forward(params, x, 4, 2, rep=bool(rep))
  np.testing.assert_allclose(feats, ref_feats, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(logits, ref_logits, atol=1e-5, rtol=1e-5)
  assert logits.shape == (3, 10)


def test_headless_returns_features_only():
  model = ViT(**{**TINY, 'num_classes': 0})
  params = random_params(model)
  logits, feats = apply(model, params, images(), False)
  assert logits is None
  np.testing.assert_allclose(feats, np_forward(params, images(), 4, 2)[1], atol=1e-5)


def test_head_initialised_to_zero():
  model = ViT(**TINY)

  def init(rng):  # only head and cls are returned, so XLA compiles just their init
    params = model.init(rng, jnp.zeros((1, 16, 16, 3)), train=False)['params']
    return {'head': params['head'], 'cls': params['cls']}

  params = jax.jit(init)(jax.random.PRNGKey(0))
  assert not np.any(params['head']['kernel']) and not np.any(params['head']['bias'])
  assert not np.any(params['cls'])


def test_drop_path_off_in_eval():
  model = ViT(**TINY, drop_path_rate=0.5)
  params = random_params(model)
  x = images()
  a = apply(model, params, x, False)
  b = apply(model, params, x, False, seed=3)
  ref = np_forward(params, x, 4, 2)
  for out in (a, b):
    np.testing.assert_allclose(out[0], ref[0], atol=1e-5, rtol=1e-5)


def test_train_equals_eval_without_drop_path_or_dropout():
  model = ViT(**TINY)
  params = random_params(model)
  x = images()
  train = apply(model, params, x, True, seed=5)
  evalu = apply(model, params, x, False)
  np.testing.assert_array_equal(train[0], evalu[0])
  np.testing.assert_array_equal(train[1], evalu[1])


def test_drop_path_per_sample_schedule_and_scale():
  """With 2 blocks and rate 0.5, block 0 gets rate 0 (never dropped) and block 1 rate 0.5:
  each sample's output must equal the reference with block 1's two branches each scaled by
  0 or 1/(1-0.5) = 2, and samples in one batch must differ in which were dropped."""
  model = ViT(**TINY, drop_path_rate=0.5)
  params = random_params(model)
  x = images(n=16)
  seen = set()
  outs = []
  for seed in range(2):
    logits, _ = apply(model, params, x, True, seed=seed)
    outs.append(np.asarray(logits))
    refs = {
      combo: np_forward(params, x, 4, 2, branch_scale={(1, 0): combo[0], (1, 1): combo[1]})[0]
      for combo in itertools.product((0.0, 2.0), repeat=2)
    }
    for i in range(len(x)):
      match = [c for c, r in refs.items() if np.allclose(logits[i], r[i], atol=1e-5)]
      assert len(match) == 1, f'sample {i}: output matches no drop-path pattern'
      seen.add(match[0])
  assert len(seen) == 4  # every pattern occurs over 32 samples
  assert not np.allclose(outs[0], outs[1])  # another rng, another pattern


def test_dropout_uses_dropout_rng():
  model = ViT(**TINY, dropout_rate=0.3, attention_dropout_rate=0.3)
  params = random_params(model)
  x = images()
  run = lambda s: apply(model, params, x, True, seed=s)[0]
  np.testing.assert_array_equal(run(1), run(1))
  assert not np.allclose(run(1), run(2))
  np.testing.assert_array_equal(
    apply(model, params, x, False)[0], apply(model, params, x, False)[0]
  )
