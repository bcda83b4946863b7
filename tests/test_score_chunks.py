"""The SupCon selection pass with its backward in chunks (config.gps.score_chunks, GradCache):
the same scores as the one-chunk pass, the per-chunk rng in both passes, less memory, and
one-line config errors. The sharded version is in tests/test_sharding.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gps_jax import config_check
from gps_jax import grad_pass
from gps_jax import roles as roles_lib
from gps_jax import scoring
from gps_jax import tree as tree_lib
from gps_jax.config_defaults import experiment_config
from gps_jax.errors import UserError
from gps_jax.models import ViT

from tiny import TINY, random_params, tiny_shapes, two_view_batches


def _setup(drop_path_rate=0.0):
  model = ViT(**TINY, drop_path_rate=drop_path_rate)
  flat = {
    p: jnp.asarray(v) for p, v in random_params(tiny_shapes(drop_path_rate=drop_path_rate)).items()
  }
  roles = roles_lib.assign_roles(tree_lib.unflat(flat))
  return model, flat, roles


def test_chunk_rows_interleaves_and_inverts():
  a = jnp.arange(12).reshape(6, 2)
  parts = grad_pass.chunk_rows(a, 3)
  # Chunk c holds rows c, c + 3: every chunk takes rows from each half of the batch.
  np.testing.assert_array_equal(parts[:, :, 0], [[0, 6], [2, 8], [4, 10]])
  np.testing.assert_array_equal(grad_pass.unchunk_rows(parts), a)


@pytest.mark.parametrize('chunks', [2, 4, 8])
def test_chunked_pass_gives_the_one_chunk_scores(chunks):
  model, flat, roles = _setup()
  batches = two_view_batches(2, 4, seed=0)
  rng = jax.random.PRNGKey(3)
  want, info = scoring.accumulate_scores(model.apply, flat, roles, batches, rng)
  got, got_info = scoring.accumulate_scores(model.apply, flat, roles, batches, rng, chunks=chunks)
  assert set(got) == set(want)
  for p in want:
    w = np.asarray(want[p])
    assert np.abs(w).max() > 0, p
    np.testing.assert_allclose(got[p], w, rtol=1e-4, atol=1e-5 * np.abs(w).max(), err_msg=p)
  np.testing.assert_allclose(got_info['loss'], info['loss'], rtol=1e-6)
  assert got_info['images'] == info['images'] == 16


def test_chunked_pass_keeps_each_chunks_rng_in_both_passes():
  """With drop-path on, the chunked gradient is jax.grad of the loss whose chunk c runs with
  split(rng, chunks)[c] (so the re-forward redraws the first forward's masks), and that rng
  really matters."""
  model, flat, roles = _setup(drop_path_rate=0.5)
  chunks, batch = 2, two_view_batches(1, 4, seed=1)[0]
  rng = jax.random.PRNGKey(5)
  got, _ = scoring.accumulate_scores(model.apply, flat, roles, [batch], rng, chunks=chunks)
  select = list(roles_lib.leaves_with_role(roles, 'select'))
  features, head = scoring._supcon_parts(model.apply, 0.07)

  def loss(cand, keys):
    params = tree_lib.unflat({**flat, **cand})
    parts = grad_pass.chunk_rows(jnp.asarray(batch['image']), chunks)
    feats = jnp.stack([features(params, parts[c], keys[c]) for c in range(chunks)])
    return head(grad_pass.unchunk_rows(feats), jnp.asarray(batch['label']))

  cand = {p: flat[p] for p in select}
  want = jax.grad(loss)(cand, jax.random.split(jax.random.fold_in(rng, 0), chunks))
  same_key = jax.grad(loss)(cand, jnp.stack([jax.random.fold_in(rng, 0)] * chunks))
  rng_matters = False
  for p in select:
    w = np.asarray(want[p])
    np.testing.assert_allclose(got[p], w, rtol=1e-4, atol=1e-5 * np.abs(w).max(), err_msg=p)
    rng_matters |= not np.allclose(w, same_key[p], rtol=1e-3, atol=1e-3 * np.abs(w).max())
  assert rng_matters


def test_chunked_step_needs_less_memory():
  """XLA's compiled peak of the score step falls with the chunks (one chunk's activations)."""
  model, flat, roles = _setup()
  candidates = list(roles_lib.leaves_with_role(roles, 'select'))
  scores = {p: jnp.zeros(flat[p].shape, jnp.float32) for p in candidates}
  batch = {'image': jnp.zeros((64, 8, 8, 3)), 'label': jnp.zeros((32,), jnp.int32)}
  peaks = {}
  for chunks in (1, 4):
    step = scoring.make_score_step(model.apply, candidates, chunks=chunks)
    m = step.lower(scores, flat, batch, jax.random.PRNGKey(0)).compile().memory_analysis()
    peaks[chunks] = m.temp_size_in_bytes
  assert peaks[4] < 0.6 * peaks[1], peaks


@pytest.mark.parametrize(
  'chunks,batch,match',
  [(0, 8, r'gps\.score_chunks=0: must be an integer > 0'),
   (3, 4, r'gps\.score_chunks=3: must divide the 8 views')],
)  # fmt: skip
def test_config_errors_name_the_key(chunks, batch, match):
  c = experiment_config()
  c.gps.score_chunks, c.data.batch_size = chunks, batch
  with pytest.raises(UserError, match=match):
    config_check.validate(c)


def test_unrolled_chunks_give_the_same_scores_and_count_every_chunk():
  """`unroll` (for the benchmark's FLOPs) is the looped computation; XLA's cost analysis
  counts the loop body once, the unrolled chunks whole (plus the extra forward)."""
  model, flat, roles = _setup()
  candidates = list(roles_lib.leaves_with_role(roles, 'select'))
  zeros = {p: jnp.zeros(flat[p].shape, jnp.float32) for p in candidates}
  batch = {k: jnp.asarray(v) for k, v in two_view_batches(1, 8, seed=2)[0].items()}
  rng, out, flops = jax.random.PRNGKey(0), {}, {}
  for name, kw in {
    'one': {},
    'looped': {'chunks': 4},
    'unrolled': {'chunks': 4, 'unroll': True},
  }.items():
    step = scoring.make_score_step(model.apply, candidates, **kw)
    flops[name] = step.lower(zeros, flat, batch, rng).compile().cost_analysis()['flops']
    out[name], _ = step({p: jnp.zeros_like(v) for p, v in zeros.items()}, flat, batch, rng)
  for p in candidates:
    np.testing.assert_allclose(out['unrolled'][p], out['looped'][p], rtol=1e-5, atol=1e-7)
  assert flops['looped'] < flops['one'] < flops['unrolled'], flops
