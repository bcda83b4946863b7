"""VPT prompts in the ViT: shallow prompts inserted once, deep prompts replaced before every
block (the plain block of the same parameters as the reference), their init and the
configurations refused."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from peft_models import ADDED, P, flat_np, images, init, model_of, run
from tiny import TINY, random_params

from gps_jax import tree as tree_lib
from gps_jax.models.vit import Encoder1DBlock

# ---------------------------------------------------------------- VPT


def np_tokens(params, x, patch):
  """[cls, patches] + position embedding in NumPy: the sequence before any prompt."""
  b, s = x.shape[0], x.shape[1]
  g = s // patch
  patches = x.reshape(b, g, patch, g, patch, 3).transpose(0, 1, 3, 2, 4, 5)
  kernel = params['embedding/kernel']
  emb = patches.reshape(b, g * g, -1) @ kernel.reshape(-1, kernel.shape[-1])
  emb = emb + params['embedding/bias']
  cls = np.broadcast_to(params['cls'], (b, 1, emb.shape[-1]))
  return np.concatenate([cls, emb], axis=1) + params['Transformer/posembed_input/pos_embedding']


def nudge(a, seed=0):
  return np.random.default_rng(seed).normal(size=a.shape).astype(np.float32)


def block_calls(model, params, x):
  """(input, output) of every Encoder1DBlock call, in order, and the model's outputs."""
  calls = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, Encoder1DBlock) and context.method_name == '__call__':
      calls.append((np.asarray(args[0]), np.asarray(out)))
    return out

  with nn.intercept_methods(record):
    outputs = model.apply({'params': tree_lib.unflat(params)}, x, train=False)
  return calls, outputs


def plain_block(params, i, tokens):
  """Block i of the tiny ViT without prompts, on given tokens (the deep-VPT reference)."""
  prefix = f'Transformer/encoderblock_{i}/'
  p = {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)}
  p.pop('vpt_prompts')
  block = Encoder1DBlock(num_heads=TINY['num_heads'], mlp_dim=TINY['mlp_dim'])
  return np.asarray(block.apply({'params': tree_lib.unflat(p)}, tokens, deterministic=True))


def vpt_params(deep, seed=2):
  model = model_of('vit', vpt_tokens=P, vpt_deep=deep)
  fresh = flat_np(init(model, seed=seed))
  base = random_params(jax.eval_shape(lambda: init(model_of('vit'))), seed=seed)
  return model, fresh, {**fresh, **base}


def test_vpt_shallow_inserts_one_set_of_prompts_before_block_0():
  model, fresh, params = vpt_params(deep=False)
  assert [k for k in fresh if ADDED.search(k)] == ['Transformer/vpt_prompts']
  prompts = params['Transformer/vpt_prompts']
  assert prompts.shape == (1, P, TINY['hidden_size'])
  x = images(model)
  calls, (logits, feats) = block_calls(model, params, x)
  tokens = np_tokens(params, x, TINY['patch_size'])  # (B, 1 + N, D)
  n = tokens.shape[1] - 1
  (in0, out0), (in1, _) = calls
  assert in0.shape == (2, 1 + P + n, TINY['hidden_size'])
  np.testing.assert_allclose(in0[:, :1], tokens[:, :1], atol=1e-5)
  np.testing.assert_array_equal(
    in0[:, 1 : 1 + P], np.broadcast_to(prompts, (2, P, prompts.shape[2]))
  )
  np.testing.assert_allclose(in0[:, 1 + P :], tokens[:, 1:], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(in1, out0)  # carried through, not replaced
  # The class token attends to the prompts: other prompts, other logits (a random change: a
  # constant one is lost in the LayerNorms).
  other = {**params, 'Transformer/vpt_prompts': prompts + nudge(prompts)}
  assert np.abs(np.asarray(run(model, other, x)[0]) - np.asarray(logits)).max() > 1e-4
  assert feats.shape == (2, TINY['hidden_size'])


def test_vpt_deep_replaces_the_prompts_before_every_block():
  model, fresh, params = vpt_params(deep=True)
  layers = TINY['num_layers']
  names = [f'Transformer/encoderblock_{i}/vpt_prompts' for i in range(layers)]
  assert [k for k in fresh if ADDED.search(k)] == names  # one set per block, none shared
  x = images(model)
  calls, (logits, _) = block_calls(model, params, x)
  tokens = np_tokens(params, x, TINY['patch_size'])
  b, d = x.shape[0], TINY['hidden_size']
  seq = tokens
  for i, (_, out) in enumerate(calls):
    prompts = np.broadcast_to(params[names[i]], (b, P, d))
    rest = seq[:, 1:] if i == 0 else seq[:, 1 + P :]  # block 0 inserts, the others replace
    want = plain_block(params, i, np.concatenate([seq[:, :1], prompts, rest], axis=1))
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)
    seq = out
  assert calls[0][0].shape[1] == tokens.shape[1] + P  # room for the prompts before block 0
  # Block 1's prompts reach the output.
  other = {**params, names[1]: params[names[1]] + nudge(params[names[1]])}
  assert np.abs(np.asarray(run(model, other, x)[0]) - np.asarray(logits)).max() > 1e-4


@pytest.mark.parametrize('deep', [False, True])
def test_prompt_init_is_uniform_within_the_vpt_bound(deep):
  v = math.sqrt(6.0 / (3 * TINY['patch_size'] ** 2 + TINY['hidden_size']))
  fresh = flat_np(init(model_of('vit', vpt_tokens=8, vpt_deep=deep), seed=4))
  prompts = [a for k, a in fresh.items() if k.endswith('vpt_prompts')]
  assert prompts and all(a.shape == (1, 8, TINY['hidden_size']) for a in prompts)
  for a in prompts:
    assert np.abs(a).max() <= v and np.abs(a).max() > 0.8 * v and (a < 0).any() and (a > 0).any()
  if deep:
    assert not np.array_equal(prompts[0], prompts[1])  # drawn per block


def test_vit_rejects_bad_prompt_and_adapter_fields():
  x = jnp.zeros((1, 8, 8, 3))
  with pytest.raises(ValueError, match='vpt_deep=True needs vpt_tokens > 0'):
    init(model_of('vit', vpt_deep=True))
  with pytest.raises(ValueError, match=r'adapter_dim \(-1\)'):
    model_of('vit', adapter_dim=-1).init(jax.random.PRNGKey(0), x, train=False)


@pytest.mark.parametrize(
  'family,why',
  [('swin', 'Swin here: its windowed attention'), ('convnext', 'ConvNeXt: it has no token')],
)
def test_vpt_is_refused_outside_vit(family, why):
  with pytest.raises(ValueError) as err:
    jax.eval_shape(lambda: init(model_of(family, vpt_tokens=2)))
  # One line (JAX may append its traceback note below it).
  assert f'vpt_tokens=2, but VPT is not defined for {why}' in str(err.value).splitlines()[0]
  jax.eval_shape(lambda: init(model_of(family, vpt_tokens=0)))  # the default is fine
