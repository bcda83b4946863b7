"""Adapters and VPT prompts in the backbones, and loading pretrained files into models that
have them. The references are NumPy (the adapter, the ViT patch embedding), the plain block
of the same parameters (deep VPT), and the adapter-free model itself (identity at init)."""

import functools
import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gps_jax import tree as tree_lib
from gps_jax import weights
from gps_jax.models import fitting, registry
from gps_jax.models.convnext import ConvNeXtBlock
from gps_jax.models.layers import Adapter
from gps_jax.models.timm_layout import timm_shape
from gps_jax.models.vit import Encoder1DBlock
from gps_jax.vit_npz import save_vit_npz

try:
  from tiny import TINY, random_params
except ImportError:  # tests/ imported as a package
  from tests.tiny import TINY, random_params

P = 3  # prompt tokens
ADDED = re.compile(r'adapter|vpt')
# family -> (config overrides making it small, image size); 'name' picks the family.
SMALL = {
  'vit': dict(name='vit', num_classes=5, image_size=8, **{k: TINY[k] for k in TINY if k not in (
    'num_classes', 'image_size')}),
  'swin': dict(
    name='swin', num_classes=5, image_size=32, patch_size=4, embed_dim=8, depths=(2, 1),
    num_heads=(1, 2), window_size=4,
  ),
  'convnext': dict(
    name='convnext', num_classes=5, image_size=32, depths=(1, 2, 1, 1), dims=(8, 16, 24, 32)
  ),
}  # fmt: skip
# family -> the adapter modules of one block of each kind.
BLOCK_ADAPTERS = {
  'vit': [f'Transformer/encoderblock_{i}/adapter_{k}' for i in (0, 1) for k in ('attn', 'mlp')],
  'swin': [f'layers_{i}/blocks_{j}/adapter_{k}' for i, j in ((0, 0), (0, 1), (1, 0))
           for k in ('attn', 'mlp')],
  'convnext': [f'stages_{i}/blocks_{j}/adapter_mlp' for i, j in
               ((0, 0), (1, 0), (1, 1), (2, 0), (3, 0))],
}  # fmt: skip


def model_of(family, **kw):
  return registry.build_model({**SMALL[family], **kw})


def init(model, seed=0):
  s = model.image_size
  return _init(model, jax.random.PRNGKey(seed), jnp.zeros((1, s, s, 3)))


@functools.partial(jax.jit, static_argnums=0)
def _init(model, rng, x):
  return model.init(rng, x, train=False)['params']


@functools.partial(jax.jit, static_argnums=0)
def _apply(model, params, x):
  return model.apply({'params': params}, x, train=False)


def flat_np(params):
  return {k: np.asarray(v) for k, v in tree_lib.flat(params).items()}


def images(model, n=2, seed=1):
  s = model.image_size
  return np.random.default_rng(seed).uniform(-1, 1, (n, s, s, 3)).astype(np.float32)


def run(model, params, x):
  return _apply(model, tree_lib.unflat(params), x)


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
