"""Adapters in the backbones: the adapter against NumPy, its identity init, and where it sits
in the ViT, Swin and ConvNeXt blocks (the adapter-free model and block as references)."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from peft_models import BLOCK_ADAPTERS, SMALL, flat_np, images, init, model_of, run
from tiny import random_params

from gps_jax import tree as tree_lib
from gps_jax.models import fitting
from gps_jax.models.convnext import ConvNeXtBlock
from gps_jax.models.layers import Adapter
from gps_jax.models.vit import Encoder1DBlock


def np_gelu(x):
  return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


# ---------------------------------------------------------------- adapters


def test_adapter_is_h_plus_up_gelu_down_of_h():
  rng = np.random.default_rng(0)
  h = rng.normal(size=(2, 5, 8)).astype(np.float32)
  p = {
    'down': {'kernel': rng.normal(size=(8, 3)), 'bias': rng.normal(size=(3,))},
    'up': {'kernel': rng.normal(size=(3, 8)), 'bias': rng.normal(size=(8,))},
  }
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), p)
  got = Adapter(3).apply({'params': p}, h)
  d, u = p['down'], p['up']
  want = h + np_gelu(h @ d['kernel'] + d['bias']) @ u['kernel'] + u['bias']
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # The tanh approximation of GELU is measurably another function here.
  approx = h + np.asarray(nn.gelu(h @ d['kernel'] + d['bias'], approximate=True)) @ u['kernel']
  assert np.abs(approx + u['bias'] - want).max() > 1e-4


def test_fresh_adapter_is_identity_with_xavier_down_and_zero_up():
  p = Adapter(4).init(jax.random.PRNGKey(0), jnp.ones((2, 16)))['params']
  assert not np.asarray(p['up']['kernel']).any() and not np.asarray(p['up']['bias']).any()
  assert not np.asarray(p['down']['bias']).any()
  limit = math.sqrt(6 / (16 + 4))  # xavier_uniform of a (16, 4) kernel
  down = np.asarray(p['down']['kernel'])
  assert down.shape == (16, 4) and np.abs(down).max() <= limit and np.abs(down).max() > limit / 2
  h = np.random.default_rng(0).normal(size=(2, 16)).astype(np.float32)
  np.testing.assert_array_equal(Adapter(4).apply({'params': p}, h), h)


@pytest.mark.parametrize('family', list(SMALL))
def test_adapters_start_as_identity_and_then_act(family):
  base_model, model = model_of(family), model_of(family, adapter_dim=4)
  base = random_params(jax.eval_shape(lambda: init(base_model)), seed=2)
  shapes = {k: v.shape for k, v in tree_lib.flat(jax.eval_shape(lambda: init(model))).items()}
  want = {f'{m}/{d}/{leaf}' for m in BLOCK_ADAPTERS[family] for d in ('down', 'up')
          for leaf in ('kernel', 'bias')}  # fmt: skip
  assert set(shapes) - set(base) == want  # two adapters per block (one in ConvNeXt), no more
  assert {k: shapes[k] for k in base} == {k: v.shape for k, v in base.items()}
  # The model's own init of its adapters (a jit that computes only them: a fast test).
  fresh = flat_np(fitting.fresh_added(model, rng=jax.random.PRNGKey(5)))
  assert set(fresh) == want
  params = {**fresh, **base}
  x = images(model)
  logits0, feats0 = run(base_model, base, x)
  logits, feats = run(model, params, x)
  np.testing.assert_allclose(logits, logits0, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(feats, feats0, rtol=1e-6, atol=1e-6)
  # A non-zero 'up' in one block's adapter changes the outputs.
  up = f'{BLOCK_ADAPTERS[family][0]}/up/kernel'
  params[up] = np.random.default_rng(3).normal(size=params[up].shape).astype(np.float32)
  logits1, feats1 = run(model, params, x)
  assert np.abs(np.asarray(feats1) - np.asarray(feats0)).max() > 1e-3
  assert np.abs(np.asarray(logits1) - np.asarray(logits0)).max() > 1e-4


def _capture(module, params, x, **kw):
  return module.apply({'params': params}, x, capture_intermediates=True, mutable=['intermediates'],
                      **kw)  # fmt: skip


def test_vit_adapters_sit_on_the_branches_before_the_residual_add():
  """out = x + A_attn(attention branch), then + A_mlp(MLP branch), with the adapters' output
  computed in NumPy from the captured branch outputs."""
  block = Encoder1DBlock(num_heads=2, mlp_dim=32, adapter_dim=4)
  x = np.random.default_rng(0).normal(size=(2, 5, 16)).astype(np.float32)
  shapes = jax.eval_shape(lambda: block.init(jax.random.PRNGKey(0), x, deterministic=True))
  params = tree_lib.unflat(random_params(shapes['params'], seed=1))
  out, state = _capture(block, params, x, deterministic=True)
  inter = state['intermediates']
  attn = np.asarray(inter['MultiHeadDotProductAttention_1']['__call__'][0])
  mlp = np.asarray(inter['MlpBlock_3']['__call__'][0])

  def np_adapter(name, h):
    d, u = params[name]['down'], params[name]['up']
    return h + np_gelu(h @ d['kernel'] + d['bias']) @ u['kernel'] + u['bias']

  mid = x + np_adapter('adapter_attn', attn)
  np.testing.assert_allclose(out, mid + np_adapter('adapter_mlp', mlp), rtol=1e-4, atol=1e-4)


def test_convnext_adapter_sits_before_the_layer_scale():
  """With gamma = 0 the block is the identity whatever its adapter does: the adapter acts on
  fc2's output before gamma scales it."""
  block = ConvNeXtBlock(adapter_dim=4)
  x = np.random.default_rng(0).normal(size=(2, 6, 6, 8)).astype(np.float32)
  shapes = jax.eval_shape(lambda: block.init(jax.random.PRNGKey(0), x, deterministic=True))
  params = random_params(shapes['params'], seed=1)
  params['adapter_mlp/up/kernel'] += 1.0
  params['adapter_mlp/up/bias'] += 1.0
  params['gamma'] = np.zeros_like(params['gamma'])
  out = block.apply({'params': tree_lib.unflat(params)}, x, deterministic=True)
  np.testing.assert_array_equal(out, x)
  params['gamma'] = np.ones_like(params['gamma'])
  out = block.apply({'params': tree_lib.unflat(params)}, x, deterministic=True)
  assert np.abs(np.asarray(out) - x).max() > 1e-2
