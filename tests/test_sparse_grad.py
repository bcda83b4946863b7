"""K-entry weight gradients (gps_jax.sparse_grad) against NumPy and against autodiff of the
effective kernels, for every kernel kind of ViT, Swin and ConvNeXt, and through the trainer."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gps_jax import roles as roles_lib
from gps_jax import sparse_grad
from gps_jax import tree as tree_lib
from gps_jax import updates
from gps_jax.config_defaults import experiment_config
from gps_jax.models import ViT
from gps_jax.trainer import MaskedFinetuner

from tiny import FAMILIES, model_shapes, random_params

# The key bias has an exactly-zero true gradient (softmax is shift-invariant): its
# computed gradient is rounding noise of either path, never compared.
NOISE_ONLY = '/key/bias'


def _indices(rng, fan_in, neurons, k):
  return np.stack([rng.choice(fan_in, k, replace=False) for _ in range(neurons)]).astype(np.int32)


# ----------------------------------------------------------------------------
# the op against NumPy
# ----------------------------------------------------------------------------
def test_delta_matmul_and_its_vjp_match_numpy():
  rng = np.random.default_rng(0)
  t, f, n, k = 7, 6, 5, 3
  x = rng.normal(size=(t, f)).astype(np.float32)
  base = rng.normal(size=(f, n)).astype(np.float32)
  idx = _indices(rng, f, n, k)
  idx[1] = idx[0]  # two neurons on the same inputs: the input gradient adds both
  delta = rng.normal(size=(n, k)).astype(np.float32)
  dy = rng.normal(size=(t, n)).astype(np.float32)

  w = base.astype(np.float64)
  want_dd = np.zeros((n, k))
  for j in range(n):
    for s in range(k):
      w[idx[j, s], j] += delta[j, s]
      want_dd[j, s] = np.sum(x[:, idx[j, s]].astype(np.float64) * dy[:, j])
  want_y, want_dx = x @ w, dy @ w.T

  def f_(x_, d_):
    return sparse_grad.delta_matmul(x_, jnp.asarray(base), jnp.asarray(idx), d_)

  for fn in (f_, jax.jit(f_)):
    y, vjp = jax.vjp(fn, x, delta)
    dx, dd = vjp(jnp.asarray(dy))
    np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dd, want_dd, rtol=1e-5, atol=1e-5)
  # The frozen base gets no gradient; a bfloat16 base keeps the float32 delta whole.
  gb = jax.grad(lambda b: sparse_grad.delta_matmul(x, b, jnp.asarray(idx), delta).sum())(base)
  assert not np.any(gb)
  half = jnp.asarray(base, jnp.bfloat16)
  w16 = np.asarray(half, np.float64) + (w - base)
  y16 = sparse_grad.delta_matmul(x, half, jnp.asarray(idx), delta)
  np.testing.assert_allclose(y16, x @ w16, rtol=1e-5, atol=1e-5)


def test_delta_matmul_has_no_dense_weight_gradient():
  """The compiled backward contracts over tokens only K entries a neuron: no (F, N) dot."""
  t, f, n = 64, 96, 80
  x, dy = jnp.ones((t, f)), jnp.ones((t, n))
  base, idx, delta = jnp.ones((f, n)), jnp.zeros((n, 1), jnp.int32), jnp.ones((n, 1))

  def run(x_, d_):
    y, vjp = jax.vjp(lambda a, b: sparse_grad.delta_matmul(a, base, idx, b), x_, d_)
    return vjp(dy)

  hlo = jax.jit(run).lower(x, delta).compile().as_text()
  assert f'f32[{f},{n}]' in hlo  # the effective kernel, rebuilt for dx
  dots = re.findall(r'= f32\[([0-9,]+)\][^ ]* dot\(', hlo)
  assert dots and f'{f},{n}' not in dots and f'{n},{f}' not in dots, dots


# ----------------------------------------------------------------------------
# which modules take it
# ----------------------------------------------------------------------------
X2, X3, X4 = jnp.zeros((2, 5, 8)), jnp.zeros((2, 5, 2, 4)), jnp.zeros((2, 8, 8, 3))


@pytest.mark.parametrize(
  'module,x,fan_in_ndim,want',
  [
    (nn.Dense(4), X2, 1, 'dense'),
    (nn.DenseGeneral((2, 4), axis=-1), X2, 1, 'dense'),  # ViT q/k/v
    (nn.DenseGeneral(8, axis=(-2, -1)), X3, 2, 'dense'),  # ViT attention out
    (nn.DenseGeneral(8, axis=(-2, -1)), X3, 1, None),  # fan-in rule disagrees with the module
    (nn.DenseGeneral(8, axis=(1, 2)), X3, 2, None),  # not the trailing axes
    (nn.Conv(8, (4, 4), strides=(4, 4), padding='VALID'), X4, 3, 'patch'),  # patch embedding
    (nn.Conv(8, (4, 4), strides=(2, 2), padding='VALID'), X4, 3, None),  # overlapping windows
    (nn.Conv(8, (4, 4), strides=(4, 4), padding='SAME'), X4, 3, None),
    (nn.Conv(3, (7, 7), padding=3, feature_group_count=3), X4, 3, None),  # depthwise
  ],
)
def test_kind_of(module, x, fan_in_ndim, want):
  assert sparse_grad.kind_of(module, x, fan_in_ndim) == want


def test_rule():
  share = sparse_grad.MAX_K_SHARE
  assert sparse_grad.takes_sparse('dense', 1, round(1 / share), 'auto')
  assert sparse_grad.takes_sparse('dense', 2, round(2 / share), 'auto')
  assert not sparse_grad.takes_sparse('dense', 2, round(1 / share), 'auto')
  assert not sparse_grad.takes_sparse('dense', 768, 768, 'auto')
  assert sparse_grad.takes_sparse('dense', 768, 768, 'on')
  assert not sparse_grad.takes_sparse('dense', 1, 768, 'off')
  assert not sparse_grad.takes_sparse(None, 1, 768, 'on')  # depthwise: always dense


# ----------------------------------------------------------------------------
# every kernel kind of the three families: the same loss and gradients as autodiff
# ----------------------------------------------------------------------------


def _setup(family, k=2, seed=0):
  model = FAMILIES[family]()
  s = model.image_size
  shapes = model_shapes(model)
  base = {p: jnp.asarray(v) for p, v in random_params(shapes, seed).items()}
  roles = roles_lib.assign_roles(shapes)
  rng = np.random.default_rng(seed + 1)
  indices = {
    p: jnp.asarray(_indices(rng, r.fan_in, r.num_neurons, min(k, r.fan_in)))
    for p, r in roles_lib.leaves_with_role(roles, 'select').items()
  }
  x = jnp.asarray(np.random.default_rng(seed + 2).normal(size=(3, s, s, 3)), jnp.float32)
  return model, base, roles, indices, x


def _loss_and_grads(model, rule, base, x):
  frozen, trainable, aux = rule.init(base)
  rng = np.random.default_rng(3)
  trainable = jax.tree.map(  # a delta away from zero, so that it matters in the forward
    lambda v: v + jnp.asarray(0.1 * rng.normal(size=v.shape), v.dtype), trainable
  )

  def loss(t):
    logits, _ = rule.forward(model.apply, frozen, aux, t, x, train=False)
    return jnp.sum(jnp.sin(logits))

  return jax.jit(jax.value_and_grad(loss))(trainable)


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_sparse_gradients_equal_autodiff_of_the_effective_kernels(family):
  model, base, roles, indices, x = _setup(family)
  ref_loss, ref = _loss_and_grads(model, updates.SparseDelta(roles, indices, grad='off'), base, x)
  loss, got = _loss_and_grads(model, updates.SparseDelta(roles, indices, grad='on'), base, x)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(ref))
  for part in ('train', 'delta'):
    assert got[part].keys() == ref[part].keys()
    for p in ref[part]:
      if not p.endswith(NOISE_ONLY):
        np.testing.assert_allclose(got[part][p], ref[part][p], atol=1e-5 * scale, err_msg=p)


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_each_selected_kernel_takes_the_path_of_its_kind(family):
  model, base, roles, indices, x = _setup(family)
  rule = updates.SparseDelta(roles, indices, grad='on')
  frozen, trainable, aux = rule.init(base)
  entries = {p: (aux[p], v, rule.layout[p]) for p, v in trainable['delta'].items()}
  params = tree_lib.unflat({**frozen, **trainable['train']})
  _, seen = sparse_grad.forward(model.apply, params, entries, 'on', x, train=False)
  assert set(seen) == set(indices)
  dense = sorted(p for p, how in seen.items() if how == 'dense')
  if family == 'convnext':  # the depthwise 7x7 convs, and only they
    assert dense and all(p.endswith('conv_dw/kernel') for p in dense), dense
    assert all(roles_lib.leaves_with_role(roles, 'select')[p].shape[2] == 1 for p in dense)
  else:
    assert dense == []
  # auto: the rule per kernel (on XLA:CPU never: the layer sweep found it slower).
  _, auto = sparse_grad.forward(model.apply, params, entries, 'auto', x, train=False)
  for p, how in auto.items():
    fan_in = roles_lib.leaves_with_role(roles, 'select')[p].fan_in
    want = seen[p] == 'sparse' and sparse_grad.takes_sparse('dense', 2, fan_in, 'auto')
    assert (how == 'sparse') == want, p


def test_a_selected_leaf_outside_a_kernel_module_is_refused():
  model, base, _, _, x = _setup('vit')
  rules = ((r'pos_embedding$', 'select'), *roles_lib.GPS_RULES)
  roles = roles_lib.assign_roles(tree_lib.unflat(base), rules)
  rng = np.random.default_rng(0)
  indices = {
    p: jnp.asarray(_indices(rng, r.fan_in, r.num_neurons, 1))
    for p, r in roles_lib.leaves_with_role(roles, 'select').items()
  }
  with pytest.raises(ValueError, match=r"pos_embedding.*sparse_grad='off'"):
    _loss_and_grads(model, updates.SparseDelta(roles, indices, grad='on'), base, x)
  # and 'off' trains it as before
  _loss_and_grads(model, updates.SparseDelta(roles, indices, grad='off'), base, x)


# ----------------------------------------------------------------------------
# through the trainer, and what it saves
# ----------------------------------------------------------------------------
def _train(family, grad, steps=4):
  model, base, roles, indices, _ = _setup(family, k=1)
  cfg = experiment_config()
  cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.eps = 1e-2, 0, 1e-4
  cfg.train.sparse_grad = grad
  tuner = MaskedFinetuner(model.apply, roles, indices, cfg, num_classes=5, total_steps=steps)
  state, frozen, aux = tuner.init(base)
  rng = np.random.default_rng(5)
  s = model.image_size
  losses = []
  for _ in range(steps):
    batch = {
      'image': rng.normal(size=(4, s, s, 3)).astype(np.float32),
      'label': rng.integers(0, 5, size=4).astype(np.int32),
    }
    state, m = tuner.train_step(state, frozen, aux, batch, jax.random.PRNGKey(0))
    losses.append(float(m['loss']))
  return tuner, state, frozen, aux, np.asarray(losses)


@pytest.mark.parametrize('family', ['vit', 'convnext'])
def test_trainer_steps_match_with_and_without_sparse_gradients(family):
  _, on, *_, losses_on = _train(family, 'on')
  _, off, *_, losses_off = _train(family, 'off')
  np.testing.assert_allclose(losses_on, losses_off, atol=1e-5)
  for part in ('train', 'delta'):
    for p, v in off.trainable[part].items():
      if not p.endswith(NOISE_ONLY):
        np.testing.assert_allclose(on.trainable[part][p], v, atol=1e-5, err_msg=p)


KERNEL_OP = re.compile(r'= f32\[([\d,]*)\]\{[^}]*\} (?:dot|convolution)\(')


def test_sparse_gradients_drop_the_dense_weight_gradients_of_the_train_step():
  """The compiled step of a ViT where the kernels dominate (K = 1): with 'off' some matmul
  makes each selected kernel's dense [fan_in, neurons] gradient; with 'on' none does, and
  XLA's FLOP count drops by about those matmuls (less the few K-entry products)."""
  model = ViT(
    num_classes=5, patch_size=4, hidden_size=64, num_layers=2, num_heads=2, mlp_dim=256,
    image_size=32,
  )  # fmt: skip
  shapes = jax.eval_shape(
    lambda r: model.init(r, jnp.zeros((1, 32, 32, 3)), train=False), jax.random.PRNGKey(0)
  )['params']
  base = random_params(shapes)
  roles = roles_lib.assign_roles(shapes)
  rng = np.random.default_rng(0)
  sel = roles_lib.leaves_with_role(roles, 'select')
  indices = {p: _indices(rng, r.fan_in, r.num_neurons, 1) for p, r in sel.items()}
  kernel_shapes = {r.shape for r in sel.values()} | {
    (r.fan_in, r.num_neurons) for r in sel.values()
  }
  batch = {'image': np.zeros((8, 32, 32, 3), np.float32), 'label': np.zeros(8, np.int32)}
  flops, kernel_ops = {}, {}
  for grad in ('on', 'off'):
    cfg = experiment_config()
    cfg.train.sparse_grad = grad
    tuner = MaskedFinetuner(model.apply, roles, indices, cfg, num_classes=5, total_steps=1)
    state, frozen, aux = tuner.init(base)
    compiled = tuner.train_step.lower(state, frozen, aux, batch, jax.random.PRNGKey(0)).compile()
    flops[grad] = compiled.cost_analysis()['flops']
    shapes_out = [
      tuple(int(d) for d in m.split(',') if d) for m in KERNEL_OP.findall(compiled.as_text())
    ]
    kernel_ops[grad] = [s for s in shapes_out if s in kernel_shapes]
  # 'off': one per block kernel (the patch embedding's is not a plain dot/convolution on
  # XLA:CPU); 'on': none at all.
  assert len(kernel_ops['off']) >= len(sel) - 1 and kernel_ops['on'] == [], kernel_ops
  # A dense weight gradient is 2 * tokens * fan_in * neurons FLOPs (no class token in the
  # patch embedding).
  tokens = {p: 8 * 64 if p == 'embedding/kernel' else 8 * 65 for p in sel}
  weight_grads = sum(2 * tokens[p] * r.fan_in * r.num_neurons for p, r in sel.items())
  assert 0.85 * weight_grads < flops['off'] - flops['on'] <= weight_grads, (weight_grads, flops)
