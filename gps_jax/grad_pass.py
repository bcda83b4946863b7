"""One pass of summed gradients: the machinery every data-driven GPS score runs on.

A score source (`gps_jax.scoring`) gives a loss or a gradient function; `accumulate` runs
it over the batches of one pass in a jitted step (sharded over the mesh when there is one)
and adds the signed gradients w.r.t. the `select` leaves. `chunked_grad` computes the
gradient of a whole-batch loss a chunk of views at a time (GradCache), with the same
result.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from gps_jax import progress
from gps_jax import roles as roles_lib
from gps_jax import sharding as shard_lib
from gps_jax import tree as tree_lib

LossFn = Callable[[Any, jax.Array, jax.Array, jax.Array], jax.Array]


GradFn = Callable[[dict, dict, jax.Array, jax.Array, jax.Array], tuple[jax.Array, dict]]


def plain_grad(loss_fn: LossFn) -> GradFn:
  """(loss, gradients w.r.t. the candidates) of `loss_fn` on the whole batch at once."""

  def grad_fn(cand, rest, images, labels, rng):
    def loss(c):
      return loss_fn(tree_lib.unflat({**rest, **c}), images, labels, rng)

    return jax.value_and_grad(loss)(cand)

  return grad_fn


def chunk_rows(a: jax.Array, chunks: int) -> jax.Array:
  """(n, ...) -> (chunks, n / chunks, ...), row i * chunks + c in chunk c: each chunk takes
  rows from every device's share of a batch-sharded array."""
  return jnp.swapaxes(a.reshape(a.shape[0] // chunks, chunks, *a.shape[1:]), 0, 1)


def unchunk_rows(a: jax.Array) -> jax.Array:
  """The inverse of `chunk_rows`."""
  return jnp.swapaxes(a, 0, 1).reshape(a.shape[0] * a.shape[1], *a.shape[2:])


def chunked_grad(
  features_fn: Callable, head_fn: Callable, chunks: int, unroll: bool = False
) -> GradFn:
  """The same (loss, gradients) with the backbone's backward run `chunks` views at a time.

  A loss over the whole batch (SupCon contrasts every view with every other) cannot be
  split into per-chunk losses, but its gradient can (GradCache, Gao et al. 2021): the
  features of all views without gradients, the loss and its gradient w.r.t. the features,
  then per chunk the backbone's VJP of those feature gradients, summed. Exact; the
  backward holds one chunk's activations, for one more forward pass. Chunk c's forward
  gets the rng split(rng, chunks)[c] in both passes, so dropout and drop-path agree.

  `unroll`: Python loops instead of `lax.map` / `lax.scan`, the same computation. Only for
  XLA's cost analysis, which counts a loop body once: unrolled, XLA:CPU schedules every
  chunk's backward together and the memory saving is gone (ViT-S/16, 16 views in 2 chunks:
  2,247 MiB unrolled, 1,352 looped).
  """

  def grad_fn(cand, rest, images, labels, rng):
    n = images.shape[0]
    if n % chunks:
      raise ValueError(
        f'config.gps.score_chunks={chunks}: the {n} views of a selection batch do not '
        'split into that many equal chunks'
      )
    keys = jax.random.split(rng, chunks)
    parts = chunk_rows(images, chunks)

    def features(c, x, key):
      return features_fn(tree_lib.unflat({**rest, **c}), x, key)

    if unroll:
      feats = jnp.stack([features(cand, parts[c], keys[c]) for c in range(chunks)])
    else:
      feats = jax.lax.map(lambda xk: features(cand, *xk), (parts, keys))
    value, d_feats = jax.value_and_grad(head_fn)(unchunk_rows(feats), labels)

    def one_chunk(acc, xs):
      x, key, d = xs
      _, vjp = jax.vjp(lambda c: features(c, x, key), cand)
      (g,) = vjp(d)
      return jax.tree.map(jnp.add, acc, g), None

    grads = jax.tree.map(lambda v: jnp.zeros(v.shape, jnp.float32), cand)
    xs = (parts, keys, chunk_rows(d_feats, chunks))
    if unroll:
      for c in range(chunks):
        grads, _ = one_chunk(grads, jax.tree.map(lambda a: a[c], xs))
    else:
      grads, _ = jax.lax.scan(one_chunk, grads, xs)
    return value, grads

  return grad_fn


def make_grad_step(grad_fn: GradFn, candidates: Iterable[str], shardings: tuple | None):
  """A jitted `step(scores, params, batch, rng) -> (scores, loss)` that adds the gradient
  of the loss w.r.t. the candidates (`grad_fn`) to `scores`."""
  candidates = tuple(candidates)

  def step(scores, params, batch, rng):
    cand = {p: params[p] for p in candidates}
    rest = {p: v for p, v in params.items() if p not in cand}
    value, grads = grad_fn(cand, rest, batch['image'], batch['label'], rng)
    scores = {p: scores[p] + grads[p].astype(scores[p].dtype) for p in candidates}
    return scores, value

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


def accumulate(
  grad_fn: GradFn,
  params: Mapping[str, jax.Array],
  roles: Any,
  batches: Iterable[Mapping[str, np.ndarray]],
  rng: jax.Array,
  mesh=None,
  views: int = 2,
  total: int = 0,
) -> tuple[dict[str, jax.Array], dict[str, float]]:
  """One pass of `grad_fn` gradients over `batches`, summed (signed) per candidate;
  batch i gets the rng fold_in(rng, i). `views`: the images of a batch the loss uses,
  per image of its labels (for the 'images' count); `total`: the images of the pass, for
  the progress bar's time remaining (0: unknown)."""
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
  step = make_grad_step(grad_fn, candidates, shardings)
  losses, images = [], 0
  with progress.bar('selection pass', total) as shown:
    for i, batch in enumerate(batches):
      if mesh is not None:  # this process's share -> global arrays over the mesh
        batch = shard_lib.put_batch(batch, mesh)
      scores, loss = step(scores, params, batch, jax.random.fold_in(rng, i))
      losses.append(loss)
      n = int(batch['label'].shape[0])
      images += n * views
      shown.update(n)
  if not losses:
    raise ValueError(
      'the selection pass saw no batch: the training split is smaller than '
      'one batch (batches drop the remainder); lower the batch size'
    )
  mean_loss = float(np.mean(jax.device_get(losses)))
  return scores, {'batches': len(losses), 'images': images, 'loss': mean_loss}
