"""Tests of gps_jax.selection and gps_jax.scoring against hand-written tables and NumPy
references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gps_jax import roles as roles_lib
from gps_jax import tree as tree_lib
from gps_jax import scoring
from gps_jax import selection
from gps_jax.models import ViT

from tiny import TINY, random_params, tiny_shapes, two_view_batches


# ----------------------------------------------------------------------------
# select_neuron_topk against NumPy
# ----------------------------------------------------------------------------
KINDS = {
  # name: (path, shape, fan_in_ndim under the default fan-in rules)
  'dense': ('blk/MlpBlock_3/Dense_0/kernel', (12, 20), 1),
  'qkv': ('blk/MultiHeadDotProductAttention_1/query/kernel', (12, 3, 4), 1),
  'out': ('blk/MultiHeadDotProductAttention_1/out/kernel', (3, 4, 12), 2),
  'conv': ('embedding/kernel', (3, 3, 4, 6), 3),
  'depthwise': ('stage_0/dwconv/kernel', (7, 7, 1, 5), 3),
}


def ref_topk(score, fan_in_ndim, k):
  """(neurons, k) indices and the mask: per output unit, top-k |score| over its fan-in,
  ties to the lower flattened fan-in index, indices ascending."""
  score = np.asarray(score)
  fan_in = int(np.prod(score.shape[:fan_in_ndim]))
  rows = score.reshape(fan_in, -1)
  n = rows.shape[1]
  idx = np.zeros((n, k), np.int64)
  mask = np.zeros((fan_in, n), bool)
  for j in range(n):
    order = np.argsort(-np.abs(rows[:, j]), kind='stable')[:k]
    idx[j] = np.sort(order)
    mask[order, j] = True
  return idx, mask.reshape(score.shape)


def roles_for(shapes_by_path):
  params = tree_lib.unflat(
    {p: jax.ShapeDtypeStruct(s, jnp.float32) for p, s in shapes_by_path.items()}
  )
  return roles_lib.assign_roles(
    params, ((r'(^|/)bias$', 'train'), ('frozen', 'freeze'), ('.*', 'select'))
  )


@pytest.mark.parametrize('kind', sorted(KINDS))
@pytest.mark.parametrize('k', [1, 3])
@pytest.mark.parametrize('tied', [False, True])
def test_select_neuron_topk_matches_numpy(kind, k, tied):
  path, shape, fan_in_ndim = KINDS[kind]
  roles = roles_for({path: shape})
  assert tree_lib.flat(roles)[path].fan_in_ndim == fan_in_ndim
  rng = np.random.default_rng(sorted(KINDS).index(kind) + 10 * k + 100 * tied)
  if tied:  # few distinct magnitudes with both signs: ties everywhere, also across sign
    score = rng.integers(-2, 3, size=shape).astype(np.float32)
  else:
    score = rng.normal(size=shape).astype(np.float32)
  indices, masks = selection.select_neuron_topk({path: jnp.asarray(score)}, k, roles)
  want_idx, want_mask = ref_topk(score, fan_in_ndim, k)
  got_idx = np.asarray(indices[path])
  assert got_idx.dtype == np.int32
  np.testing.assert_array_equal(got_idx, want_idx)
  got_mask = np.asarray(tree_lib.flat(masks)[path])
  assert got_mask.shape == shape and got_mask.dtype == bool
  np.testing.assert_array_equal(got_mask, want_mask)
  # Exactly K per neuron: sum over the fan-in axes.
  per_neuron = got_mask.sum(axis=tuple(range(fan_in_ndim)))
  assert np.all(per_neuron == k)


def test_select_neuron_topk_all_equal_scores_take_first_k():
  path, shape, fan_in_ndim = KINDS['out']
  roles = roles_for({path: shape})
  indices, _ = selection.select_neuron_topk({path: -jnp.ones(shape)}, 4, roles)
  np.testing.assert_array_equal(np.asarray(indices[path]), np.tile(np.arange(4), (12, 1)))


def test_select_neuron_topk_accepts_nested_scores_and_roles_of_other_leaves():
  shapes = {'enc/Dense_0/kernel': (6, 4), 'enc/Dense_0/bias': (4,), 'frozen/w': (3, 3)}
  roles = roles_for(shapes)
  assert {p: r.role for p, r in tree_lib.flat(roles).items()} == {
    'enc/Dense_0/kernel': 'select',
    'enc/Dense_0/bias': 'train',
    'frozen/w': 'freeze',
  }
  score = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
  nested = {'enc': {'Dense_0': {'kernel': jnp.asarray(score)}}}
  indices, masks = selection.select_neuron_topk(nested, 2, roles)
  assert set(indices) == {'enc/Dense_0/kernel'}
  np.testing.assert_array_equal(np.asarray(indices['enc/Dense_0/kernel']), ref_topk(score, 1, 2)[0])
  fm = tree_lib.flat(masks)
  assert set(fm) == set(shapes)
  assert fm['enc/Dense_0/bias'].shape == (4,) and bool(np.all(fm['enc/Dense_0/bias']))
  assert fm['frozen/w'].shape == (3, 3) and not bool(np.any(fm['frozen/w']))


def test_select_neuron_topk_errors():
  path, shape, _ = KINDS['qkv']  # fan-in 12
  roles = roles_for({path: shape})
  score = {path: jnp.ones(shape)}
  with pytest.raises(ValueError, match=r'K=13.*fan-in 12.*' + 'query/kernel'):
    selection.select_neuron_topk(score, 13, roles)
  selection.select_neuron_topk(score, 12, roles)  # K = fan-in is allowed
  for bad_k in (0, -1, 1.5):
    with pytest.raises(ValueError):
      selection.select_neuron_topk(score, bad_k, roles)
  with pytest.raises(ValueError, match='query/kernel'):
    selection.select_neuron_topk({}, 1, roles)
  with pytest.raises(ValueError, match='shape'):
    selection.select_neuron_topk({path: jnp.ones((12, 12))}, 1, roles)
  nan = np.ones(shape, np.float32)
  nan[3, 1, 2] = np.nan
  with pytest.raises((ValueError, FloatingPointError), match='query/kernel'):
    selection.select_neuron_topk({path: jnp.asarray(nan)}, 1, roles)


# ----------------------------------------------------------------------------
# indices_to_mask
# ----------------------------------------------------------------------------
@pytest.mark.parametrize('kind', ['dense', 'out', 'conv'])
def test_indices_to_mask_matches_numpy_scatter(kind):
  path, shape, fan_in_ndim = KINDS[kind]
  role = tree_lib.flat(roles_for({path: shape}))[path]
  rng = np.random.default_rng(1)
  k = 3
  idx = np.stack(
    [np.sort(rng.choice(role.fan_in, k, replace=False)) for _ in range(role.num_neurons)]
  ).astype(np.int32)
  want = np.zeros((role.fan_in, role.num_neurons), bool)
  for j in range(role.num_neurons):
    for t in range(k):
      want[idx[j, t], j] = True
  got = np.asarray(selection.indices_to_mask(jnp.asarray(idx), role))
  np.testing.assert_array_equal(got, want.reshape(shape))


# ----------------------------------------------------------------------------
# random and magnitude scores
# ----------------------------------------------------------------------------
@pytest.fixture(scope='module')
def tiny():
  model = ViT(**TINY, drop_path_rate=0.3)
  flat = random_params(tiny_shapes(drop_path_rate=0.3))
  roles = roles_lib.assign_roles(tree_lib.unflat(flat))
  return model, flat, roles


@pytest.mark.slow
def test_random_scores(tiny):
  _, _, roles = tiny
  select = roles_lib.leaves_with_role(roles, 'select')
  s1 = scoring.random_scores(roles, jax.random.PRNGKey(1))
  s2 = scoring.random_scores(roles, jax.random.PRNGKey(2))
  assert set(s1) == set(select)
  k = 2
  i1, _ = selection.select_neuron_topk(s1, k, roles)
  i2, _ = selection.select_neuron_topk(s2, k, roles)
  differ = 0
  for p, r in select.items():
    assert s1[p].shape == r.shape
    a = np.asarray(i1[p])
    assert a.shape == (r.num_neurons, k)
    assert np.all((a >= 0) & (a < r.fan_in))
    assert np.all(np.diff(a, axis=1) > 0)  # K distinct inputs per neuron, ascending
    # Random: the neurons of a leaf do not all pick the same inputs.
    assert len({tuple(row) for row in a}) > 1
    differ += int(not np.array_equal(a, np.asarray(i2[p])))
    np.testing.assert_array_equal(a, ref_topk(np.asarray(s1[p]), r.fan_in_ndim, k)[0])
  assert differ == len(select)  # another seed, another selection in every leaf
  # Same seed, same scores.
  s1b = scoring.random_scores(roles, jax.random.PRNGKey(1))
  for p in select:
    np.testing.assert_array_equal(np.asarray(s1[p]), np.asarray(s1b[p]))


def test_magnitude_scores(tiny):
  _, flat, roles = tiny
  select = roles_lib.leaves_with_role(roles, 'select')
  scores = scoring.magnitude_scores(flat, roles)
  assert set(scores) == set(select)
  for p in select:
    np.testing.assert_array_equal(np.asarray(scores[p]), np.abs(flat[p]))
  p = 'Transformer/encoderblock_1/MultiHeadDotProductAttention_1/out/kernel'
  indices, _ = selection.select_neuron_topk({p: scores[p]}, 3, {p: tree_lib.flat(roles)[p]})
  np.testing.assert_array_equal(np.asarray(indices[p]), ref_topk(flat[p], 2, 3)[0])


# ----------------------------------------------------------------------------
# SupCon score accumulation
# ----------------------------------------------------------------------------
def own_supcon(z, labels, tau):
  """SupCon, contrast mode 'all', on (N, D) rows written directly from the definition."""
  n = z.shape[0]
  sim = z @ z.T / tau
  eye = jnp.eye(n, dtype=bool)
  sim_others = jnp.where(eye, -1e30, sim)
  m = jax.lax.stop_gradient(sim_others.max(axis=1, keepdims=True))
  log_den = m + jnp.log(jnp.exp(sim_others - m).sum(axis=1, keepdims=True))
  pos = (labels[:, None] == labels[None, :]) & ~eye
  npos = pos.sum(1)
  per_anchor = -(pos * (sim - log_den)).sum(1) / jnp.maximum(npos, 1)
  has = npos > 0
  return (per_anchor * has).sum() / has.sum()


@pytest.mark.slow
def test_accumulate_scores_is_sum_of_batch_gradients(tiny):
  model, flat, roles = tiny
  tau = 0.1
  batches = two_view_batches(3, 4, seed=3)
  rng = jax.random.PRNGKey(7)
  params = {p: jnp.asarray(v) for p, v in flat.items()}
  scores, stats = scoring.accumulate_scores(
    model.apply, params, roles, iter(batches), rng, temperature=tau
  )
  select = roles_lib.leaves_with_role(roles, 'select')
  assert set(scores) == set(select)

  @jax.jit
  def loss_and_grad(params, images, labels, key):
    def loss(p):
      _, feats = model.apply(
        {'params': tree_lib.unflat(p)}, images, train=True, rngs={'dropout': key}
      )
      z = feats / jnp.linalg.norm(feats, axis=-1, keepdims=True)
      # Rows 0..B-1 are the first views, B..2B-1 the second views of the same images.
      # The loss is scaled by tau / base_tau, base_tau = 0.07 as in the reference code.
      return tau / 0.07 * own_supcon(z, jnp.concatenate([labels, labels]), tau)

    return jax.value_and_grad(loss)(params)

  want = {p: np.zeros(r.shape, np.float64) for p, r in select.items()}
  same_rng = {p: np.zeros(r.shape, np.float64) for p, r in select.items()}
  losses = []
  for i, b in enumerate(batches):
    l, g = loss_and_grad(params, b['image'], b['label'], jax.random.fold_in(rng, i))
    losses.append(float(l))
    _, g0 = loss_and_grad(params, b['image'], b['label'], rng)
    for p in select:
      want[p] += np.asarray(g[p], np.float64)
      same_rng[p] += np.asarray(g0[p], np.float64)

  assert stats['batches'] == 3
  assert stats['images'] == 3 * 8
  np.testing.assert_allclose(stats['loss'], np.mean(losses), rtol=1e-5)
  negatives = 0
  rng_matters = False
  for p in select:
    got = np.asarray(scores[p], np.float64)
    scale = np.abs(want[p]).max()
    assert scale > 0, p
    np.testing.assert_allclose(got, want[p], rtol=1e-5, atol=1e-5 * scale, err_msg=p)
    negatives += int((got < 0).sum())
    rng_matters |= not np.allclose(want[p], same_rng[p], rtol=1e-3, atol=1e-3 * scale)
  assert negatives > 0  # signed sum, no absolute value yet
  # Drop-path is on in training mode: the per-batch rng changes the gradients, so the
  # comparison above really checks which rng each batch gets.
  assert rng_matters


def test_accumulate_scores_empty_pass_raises(tiny):
  model, flat, roles = tiny
  with pytest.raises(ValueError, match='no batch'):
    scoring.accumulate_scores(model.apply, flat, roles, iter([]), jax.random.PRNGKey(0))


def test_scores_stay_float32_under_bfloat16_compute(tiny):
  """The selection scores are float32 sums whatever the model's compute dtype (the original's
  float16 autocast could underflow them): with a bfloat16 forward/backward the scores are
  float32 and pick nearly the entries of the float32 pass."""
  _, flat, roles = tiny
  params = {p: jnp.asarray(v) for p, v in flat.items()}
  batches = two_view_batches(2, 4, seed=5)
  rng = jax.random.PRNGKey(3)
  picked = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    model = ViT(**TINY, drop_path_rate=0.3, dtype=dtype)
    scores, _ = scoring.accumulate_scores(model.apply, params, roles, iter(batches), rng)
    assert all(s.dtype == jnp.float32 for s in scores.values())
    picked[dtype] = selection.select_neuron_indices(scores, 1, roles)
  same = sum(int((picked[jnp.float32][p] == picked[jnp.bfloat16][p]).sum()) for p in picked[jnp.float32])
  total = sum(int(v.size) for v in picked[jnp.float32].values())
  print(f'bfloat16 compute keeps {same} of {total} top-1 entries')
  assert same / total > 0.8, f'{same} of {total} top-1 entries kept under bfloat16'
