"""GPS selection: SupCon gradient scores and per-neuron top-K masks.

The score of a candidate weight is the signed sum, over one pass of the
training split, of the gradient of the batch-mean SupCon loss on the
backbone's L2-normalised pre-logits features (two augmented views of each
image in one forward pass, model in training mode). At selection time every
neuron keeps the K inputs with the largest |score|.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from gps_jax import roles as roles_lib
from gps_jax import tree as tree_lib
from gps_jax import sharding as shard_lib
from gps_jax.losses import l2_normalize, supcon_loss



def make_score_step(
  apply_fn: Callable,
  candidates: Iterable[str],
  temperature: float = 0.07,
  shardings: tuple | None = None,
) -> Callable:
  """Returns a jitted `step(scores, params, batch, rng) -> (scores, loss)`.

  `params` and `scores` are flat {path: array} dicts; `scores` holds the
  candidate leaves only and its buffers are donated. `batch['image']` is
  (2B, H, W, C) — the first B rows are the first views — and
  `batch['label']` is (B,). `shardings` = (scores, params, batch) shardings
  jits the step with explicit in/out shardings on their mesh.
  """
  candidates = tuple(candidates)

  # Each process contributes a view-major block [first views; second views] of its
  # own examples, so a global batch is P such blocks, in process order.
  blocks = jax.process_count()

  def loss_fn(cand, rest, images, labels, rng):
    params = tree_lib.unflat({**rest, **cand})
    _, features = apply_fn({'params': params}, images, train=True, rngs={'dropout': rng})
    z = l2_normalize(features.astype(jnp.float32))
    b = labels.shape[0] // blocks
    z = jnp.swapaxes(z.reshape(blocks, 2, b, -1), 1, 2)  # (P, b, 2 views, D)
    return supcon_loss(z.reshape(blocks * b, 2, -1), labels, temperature)

  def step(scores, params, batch, rng):
    cand = {p: params[p] for p in candidates}
    rest = {p: v for p, v in params.items() if p not in cand}
    loss, grads = jax.value_and_grad(loss_fn)(cand, rest, batch['image'], batch['label'], rng)
    scores = {p: scores[p] + grads[p].astype(scores[p].dtype) for p in candidates}
    return scores, loss

  if shardings is None:
    return jax.jit(step, donate_argnums=(0,))
  scores_sh, params_sh, batch_sh = shardings
  repl = shard_lib.replicated(batch_sh.mesh)
  return jax.jit(
    step,
    in_shardings=(scores_sh, params_sh, batch_sh, repl),
    out_shardings=(scores_sh, repl),
    donate_argnums=(0,),
  )


def accumulate_scores(
  apply_fn: Callable,
  params: Mapping[str, jax.Array],
  roles: Any,
  batches: Iterable[Mapping[str, np.ndarray]],
  rng: jax.Array,
  temperature: float = 0.07,
  mesh=None,
) -> tuple[dict[str, jax.Array], dict[str, float]]:
  """One pass of SupCon gradients over `batches`, summed (signed) per candidate.

  Returns the scores {path: array} of every `select` leaf and statistics
  (batches, images, mean loss). With a `mesh`, the batches are split over all
  its devices and the scores are sharded like their kernels.
  """
  candidates = list(roles_lib.leaves_with_role(roles, 'select'))
  scores = {p: jnp.zeros(params[p].shape, jnp.float32) for p in candidates}
  shardings = None
  if mesh is not None:
    shardings = (
      shard_lib.tree_shardings(mesh, scores),
      shard_lib.tree_shardings(mesh, dict(params)),
      shard_lib.batch_sharding(mesh),
    )
    scores = shard_lib.put_tree(scores, shardings[0])
    params = shard_lib.put_tree(dict(params), shardings[1])
  step = make_score_step(apply_fn, candidates, temperature, shardings)
  losses, images = [], 0
  for i, batch in enumerate(batches):
    if mesh is not None:  # this process's share -> global arrays over the mesh
      batch = shard_lib.put_batch(batch, mesh)
    scores, loss = step(scores, params, batch, jax.random.fold_in(rng, i))
    losses.append(loss)
    images += int(batch['image'].shape[0])
  if not losses:
    raise ValueError(
      'the selection pass saw no batch: the training split is smaller than '
      'one batch (batches drop the remainder); lower the batch size'
    )
  mean_loss = float(np.mean(jax.device_get(losses)))
  return scores, {'batches': len(losses), 'images': images, 'loss': mean_loss}


def random_scores(roles: Any, rng: jax.Array) -> dict[str, jax.Array]:
  """Uniform random scores: top-K of them is K random inputs per neuron."""
  cands = roles_lib.leaves_with_role(roles, 'select')
  keys = jax.random.split(rng, max(len(cands), 1))
  return {p: jax.random.uniform(k, r.shape) for k, (p, r) in zip(keys, cands.items())}


def magnitude_scores(params: Mapping[str, jax.Array], roles: Any) -> dict[str, jax.Array]:
  """|w| scores (the magnitude criterion of the paper's ablation)."""
  return {p: jnp.abs(params[p]) for p in roles_lib.leaves_with_role(roles, 'select')}


@dataclasses.dataclass(frozen=True)
class ScoreInputs:
  """What a score source may use: the model, its flat params and roles, an rng, the
  two-view selection batches (a callable that starts the pass) and the mesh."""

  apply_fn: Callable
  params: Mapping[str, jax.Array]
  roles: Any
  rng: jax.Array
  batches: Callable[[], Iterable[Mapping[str, np.ndarray]]]
  temperature: float = 0.07
  mesh: Any = None


def _supcon(x: ScoreInputs):
  return accumulate_scores(
    x.apply_fn, x.params, x.roles, x.batches(), x.rng, temperature=x.temperature, mesh=x.mesh
  )


# Score sources by name (a method's `score`, or config.gps.score): inputs -> (scores, info).
SCORERS: dict[str, Callable[[ScoreInputs], tuple[dict, dict]]] = {
  'supcon': _supcon,
  'random': lambda x: (random_scores(x.roles, x.rng), {}),
  'magnitude': lambda x: (magnitude_scores(x.params, x.roles), {}),
}


@functools.partial(jax.jit, static_argnames=('fan_in_ndim', 'k'))
def _topk_rows(score: jax.Array, fan_in_ndim: int, k: int) -> jax.Array:
  """(neurons, k) int32 indices into the flattened fan-in, ascending per row."""
  fan_in = int(np.prod(score.shape[:fan_in_ndim]))
  rows = jnp.abs(score.reshape(fan_in, -1).T.astype(jnp.float32))
  # lax.top_k returns the lower index first among equal values: deterministic ties.
  _, idx = jax.vmap(lambda r: jax.lax.top_k(r, k))(rows)
  return jnp.sort(idx, axis=-1).astype(jnp.int32)


def indices_to_mask(indices: jax.Array, role: roles_lib.LeafRole) -> jax.Array:
  """Boolean mask of the leaf's shape with True at the selected entries."""
  n = role.num_neurons
  rows = jnp.arange(n)[:, None]
  m = jnp.zeros((role.fan_in, n), bool).at[indices, rows].set(True)
  return m.reshape(role.shape)


def element_masks(indices: Mapping[str, jax.Array], roles: Any) -> dict[str, jax.Array]:
  """Flat bool masks of the parameters' shapes: the entries at `indices` of
  `select` leaves, all of `train` leaves, none of `freeze` leaves."""
  return {
    p: indices_to_mask(indices[p], r)
    if r.role == 'select'
    else jnp.full(r.shape, r.role == 'train')
    for p, r in tree_lib.flat(roles).items()
  }


def select_neuron_indices(scores: Mapping[str, Any], k: int, roles: Any) -> dict[str, jax.Array]:
  """{path: int32 (neurons, k)} top-K of |score| per neuron of every `select`
  leaf: indices into the neuron's flattened fan-in, sorted ascending.

  `scores` is {path: array} or a nested dict with an entry for every `select`
  leaf (others are ignored).
  """
  if int(k) != k or k < 1:
    raise ValueError(f'K (gps.k) must be a positive integer, got {k!r}')
  k = int(k)
  flat_scores = (
    scores
    if all(isinstance(v, (jax.Array, np.ndarray)) for v in scores.values())
    else tree_lib.flat(scores)
  )
  indices = {}
  for path, role in roles_lib.leaves_with_role(roles, 'select').items():
    if path not in flat_scores:
      raise ValueError(f'no score for selected parameter {path!r}')
    s = flat_scores[path]
    if tuple(s.shape) != role.shape:
      raise ValueError(
        f'score for {path!r} has shape {tuple(s.shape)}, the parameter has {role.shape}'
      )
    if k > role.fan_in:
      raise ValueError(
        f'K={k} is larger than the fan-in {role.fan_in} of {path!r} '
        f'(shape {role.shape}); lower gps.k or freeze that parameter'
      )
    if not bool(jnp.all(jnp.isfinite(s))):
      raise FloatingPointError(f'scores of {path!r} contain NaN or inf')
    indices[path] = _topk_rows(s, role.fan_in_ndim, k)
  return indices


def select_neuron_topk(
  scores: Mapping[str, Any], k: int, roles: Any
) -> tuple[dict[str, jax.Array], dict]:
  """Per-neuron top-K of |score| for every leaf whose role is `select`.

  Returns:
    indices: as `select_neuron_indices`.
    masks: nested bool pytree with the parameters' shapes, as `element_masks`.
  """
  indices = select_neuron_indices(scores, k, roles)
  return indices, tree_lib.unflat(element_masks(indices, roles))
