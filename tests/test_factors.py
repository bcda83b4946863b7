"""LoRA and SSF: the factored update rules, against NumPy and against the unmerged forward."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gps_jax import factors as factors_lib
from gps_jax import methods
from gps_jax import roles as roles_lib
from gps_jax import tree as tree_lib
from gps_jax import updates
from gps_jax.config_defaults import experiment_config
from gps_jax.errors import UserError
from gps_jax.models import ViT
from gps_jax.trainer import MaskedFinetuner

from tiny import TINY, random_params, tiny_shapes


def _config(method, **lora):
  c = experiment_config()
  c.method = method
  c.lora.update(lora)
  c.optim.lr, c.optim.warmup_epochs = 1e-2, 0
  return c


@pytest.fixture(scope='module')
def tiny():
  shapes = tiny_shapes()
  params = {p: jnp.asarray(v) for p, v in random_params(shapes).items()}
  return ViT(**TINY), shapes, params


def _rule(method, shapes, **lora):
  cfg = _config(method, **lora)
  roles = roles_lib.assign_roles(shapes, methods.rules(cfg))
  return updates.make(methods.get(method).update, roles, {}, cfg, seed=3), roles


def test_lora_merged_kernel_is_w_plus_scaled_a_b(tiny):
  """Every target kernel, in its (fan_in, fan_out) view, is W + alpha/r * A @ B (NumPy)."""
  _, shapes, params = tiny
  rule, _ = _rule('lora', shapes, rank=3, alpha=6.0)
  frozen, trainable, aux = rule.init(params)
  rng = np.random.default_rng(0)
  trainable['factors'] = {k: jnp.asarray(rng.normal(size=v.shape), jnp.float32) for k, v in trainable['factors'].items()}
  merged = rule.combine(frozen, aux, trainable)
  targets = sorted(p for p in params if p.endswith(('query/kernel', 'value/kernel')))
  assert sorted(rule.spec['fan_in_ndim']) == targets and len(targets) == 4
  for p in params:
    if p not in targets:
      np.testing.assert_array_equal(np.asarray(merged[p]), np.asarray(params[p]))
      continue
    w = np.asarray(params[p], np.float64)
    a = np.asarray(trainable['factors'][f'{p}/lora_a'], np.float64)
    b = np.asarray(trainable['factors'][f'{p}/lora_b'], np.float64)
    assert a.shape == (16, 3) and b.shape == (3, 16)  # (D, rank), (rank, heads * head_dim)
    want = w.reshape(16, -1) + 2.0 * a @ b
    np.testing.assert_allclose(np.asarray(merged[p]).reshape(16, -1), want, rtol=1e-5, atol=1e-5)


def test_lora_starts_at_the_base_and_a_is_gaussian(tiny):
  _, shapes, params = tiny
  rule, _ = _rule('lora', shapes)
  frozen, trainable, aux = rule.init(params)
  merged = rule.combine(frozen, aux, trainable)
  for p in params:
    np.testing.assert_array_equal(np.asarray(merged[p]), np.asarray(params[p]))
  a = np.concatenate([np.asarray(v).ravel() for k, v in trainable['factors'].items() if k.endswith('lora_a')])
  assert all(not np.any(v) for k, v in trainable['factors'].items() if k.endswith('lora_b'))
  np.testing.assert_allclose(a.std(), 1 / np.sqrt(3 * 16), rtol=0.15)


def test_lora_on_a_fused_qkv_kernel_changes_the_q_and_v_thirds_only():
  c = 6
  shapes = {'layers_0/blocks_0/attn/qkv/kernel': (c, 3 * c), 'layers_0/blocks_0/attn/qkv/bias': (3 * c,)}
  roles = {p: 'freeze' for p in shapes}
  spec = factors_lib.lora_spec(
    shapes, roles, family='swin', targets=(), rank=2, alpha=2.0, fan_in_rules=roles_lib.DEFAULT_FAN_IN_RULES
  )
  rng = np.random.default_rng(1)
  w = rng.normal(size=(c, 3 * c)).astype(np.float32)
  f = {k: rng.normal(size=s).astype(np.float32) for k, s in factors_lib.factor_shapes(spec, shapes).items()}
  assert f['layers_0/blocks_0/attn/qkv/kernel/lora_b'].shape == (2, 2 * c)
  merged = np.asarray(
    factors_lib.merge(spec, {'layers_0/blocks_0/attn/qkv/kernel': jnp.asarray(w)}, f)['layers_0/blocks_0/attn/qkv/kernel']
  )
  ab = f['layers_0/blocks_0/attn/qkv/kernel/lora_a'] @ f['layers_0/blocks_0/attn/qkv/kernel/lora_b']
  np.testing.assert_allclose(merged[:, :c], w[:, :c] + ab[:, :c], atol=1e-5)
  np.testing.assert_array_equal(merged[:, c : 2 * c], w[:, c : 2 * c])  # k untouched
  np.testing.assert_allclose(merged[:, 2 * c :], w[:, 2 * c :] + ab[:, c:], atol=1e-5)


def test_ssf_merged_model_equals_the_unmerged_scale_and_shift(tiny):
  """The merged parameters give the logits of the base model with y -> scale * y + shift
  applied to the output of every targeted module (flax method interception)."""
  model, shapes, params = tiny
  rule, _ = _rule('ssf', shapes)
  frozen, trainable, aux = rule.init(params)
  rng = np.random.default_rng(2)
  trainable['factors'] = {
    k: jnp.asarray((1.0 if k.endswith('scale') else 0.0) + 0.3 * rng.normal(size=v.shape), jnp.float32)
    for k, v in trainable['factors'].items()
  }
  modules = rule.spec['modules']
  assert 'embedding' in modules and 'Transformer/encoder_norm' in modules and 'head' not in modules
  assert 'Transformer/encoderblock_1/MultiHeadDotProductAttention_1/out' in modules
  assert len(modules) == 1 + 2 * 8 + 1  # patch embedding, per block 2 norms + q, k, v, out, 2 MLP, final norm
  images = jnp.asarray(rng.normal(size=(3, 8, 8, 3)), jnp.float32)
  merged = tree_lib.unflat(rule.combine(frozen, aux, trainable))
  want, _ = model.apply({'params': merged}, images, train=False)

  def ssf(next_fun, args, kwargs, context):
    y = next_fun(*args, **kwargs)
    path = '/'.join(context.module.path)
    if context.method_name == '__call__' and path in modules:
      f = trainable['factors']
      return y * f[f'{path}/ssf_scale'] + f[f'{path}/ssf_shift']
    return y

  with nn.intercept_methods(ssf):
    got, _ = model.apply({'params': tree_lib.unflat(dict(params))}, images, train=False)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5)
  assert np.abs(np.asarray(want) - np.asarray(model.apply({'params': tree_lib.unflat(dict(params))}, images, train=False)[0])).max() > 1e-2


def test_factored_rules_train_only_their_factors_and_the_head(tiny):
  model, shapes, params = tiny
  rng = np.random.default_rng(3)
  batches = [
    {'image': rng.normal(size=(4, 8, 8, 3)).astype(np.float32), 'label': rng.integers(0, 5, 4).astype(np.int32)}
    for _ in range(3)
  ]
  for method, want_count in (('lora', 4 * (16 * 8 + 8 * 16)), ('ssf', 2 * (16 + 2 * (7 * 16 + 32) + 16))):
    cfg = _config(method)
    roles = roles_lib.assign_roles(shapes, methods.rules(cfg))
    rule = updates.make(method, roles, {}, cfg, seed=0)
    counts = updates.trainable_counts(rule, params)
    assert counts == {'trainable': want_count + 16 * 5 + 5, 'head': 16 * 5 + 5}, method
    tuner = MaskedFinetuner(model.apply, roles, {}, cfg, num_classes=5, total_steps=3, update=rule)
    state, frozen, aux = tuner.init(params)
    start = jax.tree.map(np.asarray, state.trainable)
    for b in batches:
      state, m = tuner.train_step(state, frozen, aux, b, jax.random.PRNGKey(0))
    assert np.isfinite(float(m['loss']))
    assert set(frozen) == {p for p in params if not p.startswith('head/')}
    for p, v in frozen.items():
      np.testing.assert_array_equal(np.asarray(v), np.asarray(params[p]))
    moved = [k for k, v in state.trainable['factors'].items() if np.abs(np.asarray(v) - start['factors'][k]).max() > 0]
    assert moved, method
    exported = tuner.sparse_result(params, state)
    assert exported['delta'] == {} and set(exported['factors']) == set(state.trainable['factors'])


def test_bad_lora_and_ssf_settings_are_one_line_errors(tiny):
  _, shapes, _ = tiny
  with pytest.raises(UserError, match=r'config.lora.rank=0'):
    _rule('lora', shapes, rank=0)
  with pytest.raises(UserError, match=r'match no kernel'):
    _rule('lora', shapes, targets=('nothing_like_this',))
  with pytest.raises(UserError, match=r'bad regex'):
    _rule('lora', shapes, targets=('(',))
  cfg = _config('lora')
  cfg.rules = (('.*', 'train'),)  # a target kernel that is also trained in full
  roles = roles_lib.assign_roles(shapes, methods.rules(cfg))
  with pytest.raises(UserError, match=r'whose role is train'):
    updates.make('lora', roles, {}, cfg)
  with pytest.raises(UserError, match=r'unknown factor rule'):
    factors_lib.merge({'rule': 'dora'}, {}, {})


def test_a_factored_delta_saves_exports_inspects_and_refuses_to_compose(env, tmp_path):
  """A LoRA delta through the delta tools: checkpoint and export round trips keep the
  factors and their spec, apply merges them, inspect counts them, compose refuses them."""
  from delta_env import make_manifest, make_result

  from gps_jax import checkpoint
  from gps_jax import delta as delta_lib

  shapes = {p: tuple(v.shape) for p, v in env['backbone'].items()}
  roles = {p: 'freeze' for p in shapes}
  spec = factors_lib.lora_spec(
    shapes, roles, family='vit', targets=(), rank=2, alpha=4.0, fan_in_rules=roles_lib.DEFAULT_FAN_IN_RULES
  )
  rng = np.random.default_rng(5)
  f = {k: rng.normal(size=s).astype(np.float32) for k, s in factors_lib.factor_shapes(spec, shapes).items()}
  head = {p: v for p, v in make_result(env, 0)['train'].items() if p.startswith('head/')}
  manifest = make_manifest(env)
  manifest.update(method='lora', k=None, fan_in_ndim={}, shapes={}, factors=spec)
  ckpt = str(tmp_path / 'lora')
  checkpoint.save_delta(ckpt, {'indices': {}, 'delta': {}, 'train': head, 'factors': f}, manifest)
  d = delta_lib.load(ckpt)
  assert set(d.factors) == set(f) and d.manifest['factors'] == spec
  applied = delta_lib.apply_delta(d, env['base_file'])
  for p, w in env['backbone'].items():
    if p in spec['fan_in_ndim']:
      want = w.reshape(16, -1) + 2.0 * f[f'{p}/lora_a'] @ f[f'{p}/lora_b']
      np.testing.assert_allclose(applied[p].reshape(16, -1), want, rtol=1e-5, atol=1e-5)
    else:
      np.testing.assert_array_equal(applied[p], w)
  for out in ('lora.safetensors', 'lora.npz'):
    delta_lib.export_delta(d, str(tmp_path / out))
    e = delta_lib.load(str(tmp_path / out))
    assert set(e.factors) == set(f) and set(e.train) == set(head)
    for k in f:
      np.testing.assert_array_equal(e.factors[k], f[k])
  report = delta_lib.inspect_delta(d)
  assert report['factors'] == len(f)
  assert report['total']['entries'] == sum(v.size for v in f.values()) + sum(v.size for v in head.values())
  gps = str(tmp_path / 'gps')
  checkpoint.save_delta(gps, make_result(env, 1), make_manifest(env))
  with pytest.raises(ValueError, match=r'lora delta: its factors change every entry'):
    delta_lib.compose_deltas([delta_lib.load(gps), d], env['base_file'])
  # Factors without their spec (or the reverse) are refused, as a bad delta.
  del manifest['factors']
  with pytest.raises(ValueError, match=r'factors'):
    checkpoint.save_delta(str(tmp_path / 'bad'), {'indices': {}, 'delta': {}, 'train': head, 'factors': f}, manifest)


@pytest.mark.parametrize('family', ['swin', 'convnext'])
def test_lora_and_ssf_find_their_layers_in_swin_and_convnext(family):
  """The family defaults: Swin's LoRA on the q and v thirds of every fused qkv kernel,
  ConvNeXt's on the MLP's fc1 and fc2; SSF on every module with a per-channel bias. The
  merged model with SSF equals the unmerged scale-and-shift of every targeted output."""
  from peft_models import SMALL, init

  from gps_jax.models import registry

  model = registry.build_model(SMALL[family])
  params = {p: jnp.asarray(v) for p, v in tree_lib.flat(init(model, seed=1)).items()}
  shapes = {p: tuple(v.shape) for p, v in params.items()}
  roles = {p: 'train' if p.startswith('head/') else 'freeze' for p in shapes}
  spec = factors_lib.lora_spec(
    shapes, roles, family=family, targets=(), rank=2, alpha=2.0, fan_in_rules=roles_lib.DEFAULT_FAN_IN_RULES
  )
  want = [p for p in shapes if p.endswith('attn/qkv/kernel' if family == 'swin' else ('mlp/fc1/kernel', 'mlp/fc2/kernel'))]
  assert sorted(spec['fan_in_ndim']) == sorted(want) and want
  assert (set(spec['columns']) == set(want)) == (family == 'swin')
  ssf = factors_lib.ssf_spec(shapes, roles, targets=())
  with_bias = {p[: -len('/bias')] for p in shapes if p.endswith('/bias') and not p.startswith('head/')}
  assert set(ssf['modules']) == with_bias
  rng = np.random.default_rng(4)
  f = {k: jnp.asarray((1.0 if k.endswith('scale') else 0.0) + 0.2 * rng.normal(size=s), jnp.float32)
       for k, s in factors_lib.factor_shapes(ssf, shapes).items()}  # fmt: skip
  images = jnp.asarray(rng.normal(size=(2, 32, 32, 3)), jnp.float32)
  want_logits, _ = model.apply({'params': tree_lib.unflat(factors_lib.merge(ssf, params, f))}, images, train=False)

  def scale_shift(next_fun, args, kwargs, context):
    y = next_fun(*args, **kwargs)
    path = '/'.join(context.module.path)
    if context.method_name == '__call__' and path in ssf['modules']:
      return y * f[f'{path}/ssf_scale'] + f[f'{path}/ssf_shift']
    return y

  with nn.intercept_methods(scale_shift):
    got, _ = model.apply({'params': tree_lib.unflat(params)}, images, train=False)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want_logits), rtol=1e-4, atol=1e-4)
