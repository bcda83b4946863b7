"""GPS scores: what ranks the candidate entries of `select` leaves.

The score of a candidate weight is the signed sum, over one pass of the
training split, of the gradient of the batch-mean SupCon loss on the
backbone's L2-normalised pre-logits features (two augmented views of each
image in one forward pass, model in training mode).

The paper's ablations (Table 6) rank the entries otherwise; `SCORERS` holds
every source by name:

* ``supcon`` (GPS): the SupCon gradient pass above (`accumulate_scores`);
* ``head_ce``: cross-entropy gradients through a random linear head on the
  first views (`accumulate_head_ce_scores`);
* ``random``: uniform random scores (`random_scores`);
* ``magnitude``: |w| (`magnitude_scores`);
* ``task_loss``: gradients of the task's own loss through the model's own, pretrained
  output — for SAM the BCE + IoU loss of its masks through the mask decoder, what the
  original GPS code selects SAM's entries with (`accumulate_task_loss_scores`). SupCon needs
  image classes, which a segmentation set has not; a classifier's fresh head passes no
  gradient back (use ``head_ce`` there).

`DATA_SCORERS` are those that pass over the training data (the pass itself, jitted and
sharded, is `gps_jax.grad_pass`). What the scores choose (top-K per neuron, or per layer
or net) is `gps_jax.selection`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gps_jax import roles as roles_lib
from gps_jax import sharding as shard_lib
from gps_jax import tasks
from gps_jax.grad_pass import GradFn, LossFn, accumulate, chunked_grad, make_grad_step, plain_grad
from gps_jax.losses import l2_normalize, supcon_loss

# The kernel of the random linear head of the 'head_ce' score is drawn from
# N(0, HEAD_CE_STD^2) (its bias is zero): a zero head would pass no gradient back.
HEAD_CE_STD = 0.02


def _supcon_parts(apply_fn: Callable, temperature: float) -> tuple[Callable, Callable]:
  """(features(params, images, rng), head(features, labels)): SupCon on the L2-normalised
  features of both views of a two-view batch is head(features(...))."""
  # Each process contributes a view-major block [first views; second views] of its
  # own examples, so a global batch is P such blocks, in process order.
  blocks = jax.process_count()

  def features(params, images, rng):
    return apply_fn({'params': params}, images, train=True, rngs={'dropout': rng})[1]

  def head(feats, labels):
    z = l2_normalize(feats.astype(jnp.float32))
    b = labels.shape[0] // blocks
    z = jnp.swapaxes(z.reshape(blocks, 2, b, -1), 1, 2)  # (P, b, 2 views, D)
    return supcon_loss(z.reshape(blocks * b, 2, -1), labels, temperature)

  return features, head


def _supcon_grad(
  apply_fn: Callable, temperature: float, chunks: int = 1, unroll: bool = False
) -> GradFn:
  """The SupCon pass's gradient function: whole batches, or GradCache in `chunks`."""
  if chunks < 1:
    raise ValueError(f'config.gps.score_chunks={chunks}: want an integer >= 1')
  features, head = _supcon_parts(apply_fn, temperature)
  if chunks == 1:
    return plain_grad(
      lambda params, images, labels, rng: head(features(params, images, rng), labels)
    )
  return chunked_grad(features, head, chunks, unroll)


def first_views(images: jax.Array, blocks: int = 1) -> jax.Array:
  """The first view of every image of a two-view batch of `blocks` view-major blocks
  ([first views; second views] per process), in the order of the labels."""
  rest = images.shape[1:]
  b = images.shape[0] // (2 * blocks)
  return images.reshape(blocks, 2, b, *rest)[:, 0].reshape(blocks * b, *rest)


def random_head(rng: jax.Array, dim: int, num_classes: int) -> tuple[jax.Array, jax.Array]:
  """(kernel (dim, classes) ~ N(0, HEAD_CE_STD^2), zero bias): the head of 'head_ce'."""
  kernel = HEAD_CE_STD * jax.random.normal(rng, (dim, num_classes), jnp.float32)
  return kernel, jnp.zeros((num_classes,), jnp.float32)


def _head_ce_loss(apply_fn: Callable, num_classes: int, head_rng: jax.Array) -> LossFn:
  """Mean cross-entropy of a random linear head on the pre-logits features of the
  first views (the paper's Table 6c "Head+CE"); the same head for every batch."""
  blocks = jax.process_count()

  def loss_fn(params, images, labels, rng):
    x = first_views(images, blocks)
    _, features = apply_fn({'params': params}, x, train=True, rngs={'dropout': rng})
    features = features.astype(jnp.float32)
    kernel, bias = random_head(head_rng, features.shape[-1], num_classes)
    logits = features @ kernel + bias
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  return loss_fn


def make_score_step(
  apply_fn: Callable,
  candidates: Iterable[str],
  temperature: float = 0.07,
  shardings: tuple | None = None,
  chunks: int = 1,
  unroll: bool = False,
) -> Callable:
  """Returns a jitted `step(scores, params, batch, rng) -> (scores, loss)` of SupCon.

  `params` and `scores` are flat {path: array} dicts; `scores` holds the
  candidate leaves only and its buffers are donated. `batch['image']` is
  (2B, H, W, C) — the first B rows are the first views — and
  `batch['label']` is (B,). `shardings` = (scores, params, batch) shardings
  jits the step with explicit in/out shardings on their mesh. `chunks` > 1 runs the
  backward that many views at a time (`chunked_grad`: the same gradients; `unroll`
  for XLA's FLOP count only).
  """
  if shardings is not None:
    apply_fn = shard_lib.batch_sharded(apply_fn, shardings[2].mesh)
  grad_fn = _supcon_grad(apply_fn, temperature, chunks, unroll)
  return make_grad_step(grad_fn, candidates, shardings)


def accumulate_scores(
  apply_fn: Callable,
  params: Mapping[str, jax.Array],
  roles: Any,
  batches: Iterable[Mapping[str, np.ndarray]],
  rng: jax.Array,
  temperature: float = 0.07,
  mesh=None,
  chunks: int = 1,
  total: int = 0,
) -> tuple[dict[str, jax.Array], dict[str, float]]:
  """One pass of SupCon gradients over `batches`, summed (signed) per candidate.

  Returns the scores {path: array} of every `select` leaf and statistics
  (batches, images, mean loss). With a `mesh`, the batches are split over all
  its devices and the scores are sharded like their kernels. `chunks` > 1: each batch's
  backward runs that many views at a time, with the same gradients (`chunked_grad`).
  `total`: the images of the pass, for the progress bar (0: unknown).
  """
  apply_fn = shard_lib.batch_sharded(apply_fn, mesh)
  grad_fn = _supcon_grad(apply_fn, temperature, chunks)
  return accumulate(grad_fn, params, roles, batches, rng, mesh, total=total)


def accumulate_head_ce_scores(
  apply_fn: Callable,
  params: Mapping[str, jax.Array],
  roles: Any,
  batches: Iterable[Mapping[str, np.ndarray]],
  rng: jax.Array,
  num_classes: int,
  mesh=None,
  total: int = 0,
) -> tuple[dict[str, jax.Array], dict[str, float]]:
  """One pass of cross-entropy gradients through a randomly initialised linear head
  (the paper's "Head+CE" criterion), summed (signed) per candidate.

  The same two-view batches as SupCon, of which only the first views are used
  (one forward pass of B images per batch), model in training mode. ``rng`` is
  split into the head's key (`random_head(key, features, num_classes)`, one head
  for the whole pass) and the drop-path key (batch i: fold_in(key, i)). The
  model's own head takes no part.
  """
  if num_classes < 1:
    raise ValueError(f'the head_ce score needs the number of classes, got {num_classes}')
  head_rng, drop_rng = jax.random.split(rng)
  loss_fn = _head_ce_loss(shard_lib.batch_sharded(apply_fn, mesh), int(num_classes), head_rng)
  grad_fn = plain_grad(loss_fn)
  return accumulate(grad_fn, params, roles, batches, drop_rng, mesh, views=1, total=total)


def accumulate_task_loss_scores(
  apply_fn: Callable,
  params: Mapping[str, jax.Array],
  roles: Any,
  batches: Iterable[Mapping[str, np.ndarray]],
  rng: jax.Array,
  task: Any,
  mesh=None,
  total: int = 0,
) -> tuple[dict[str, jax.Array], dict[str, float]]:
  """One pass of the gradients of ``task.loss`` (`gps_jax.tasks`) on the model's outputs,
  summed (signed) per candidate: single-view batches of the training split ('label': what
  the task trains against), model in training mode, batch i with the rng fold_in(rng, i)."""
  if task is None or not hasattr(task, 'loss'):
    raise ValueError('the task_loss score needs the task of the run')
  if isinstance(task, tasks.Classification):
    raise ValueError(
      "config.gps.score='task_loss' on a classifier: its new head passes no gradient back to "
      "the backbone; use 'supcon' or 'head_ce'"
    )
  apply_fn = shard_lib.batch_sharded(apply_fn, mesh)

  def loss_fn(params, images, labels, rng):
    outputs = apply_fn({'params': params}, images, train=True, rngs={'dropout': rng})
    return task.loss(outputs, {'label': labels})[0]

  grad_fn = plain_grad(loss_fn)
  return accumulate(grad_fn, params, roles, batches, rng, mesh, views=1, total=total)


def random_scores(roles: Any, rng: jax.Array) -> dict[str, jax.Array]:
  """Uniform random scores: top-K of them is K random inputs per neuron (at the net
  level: a uniformly random subset of the whole net)."""
  cands = roles_lib.leaves_with_role(roles, 'select')
  keys = jax.random.split(rng, max(len(cands), 1))
  return {p: jax.random.uniform(k, r.shape) for k, (p, r) in zip(keys, cands.items())}


def magnitude_scores(params: Mapping[str, jax.Array], roles: Any) -> dict[str, jax.Array]:
  """|w| scores (the magnitude criterion of the paper's ablation)."""
  return {p: jnp.abs(params[p]) for p in roles_lib.leaves_with_role(roles, 'select')}


@dataclasses.dataclass(frozen=True)
class ScoreInputs:
  """What a score source may use: the model, its flat params and roles, an rng, the
  selection batches (a callable that starts the pass: two-view batches, or single-view
  training batches for the sources in `SINGLE_VIEW`), the mesh, the number of classes and
  the task (`gps_jax.tasks`)."""

  apply_fn: Callable
  params: Mapping[str, jax.Array]
  roles: Any
  rng: jax.Array
  batches: Callable[[], Iterable[Mapping[str, np.ndarray]]]
  temperature: float = 0.07
  mesh: Any = None
  num_classes: int = 0
  chunks: int = 1  # the SupCon pass's backward, views at a time (config.gps.score_chunks)
  total_images: int = 0  # images of the pass, for the progress bar (0: unknown)
  task: Any = None


def _supcon(x: ScoreInputs):
  return accumulate_scores(
    x.apply_fn,
    x.params,
    x.roles,
    x.batches(),
    x.rng,
    x.temperature,
    x.mesh,
    x.chunks,
    x.total_images,
  )


def _head_ce(x: ScoreInputs):
  scores, info = accumulate_head_ce_scores(
    x.apply_fn, x.params, x.roles, x.batches(), x.rng, x.num_classes, x.mesh, x.total_images
  )
  return scores, {**info, 'head': f'random linear, N(0, {HEAD_CE_STD}^2), first views'}


# Score sources by name (a method's `score`, or config.gps.score): inputs -> (scores, info).
SCORERS: dict[str, Callable[[ScoreInputs], tuple[dict, dict]]] = {
  'supcon': _supcon,
  'head_ce': _head_ce,
  'random': lambda x: (random_scores(x.roles, x.rng), {}),
  'magnitude': lambda x: (magnitude_scores(x.params, x.roles), {}),
  'task_loss': lambda x: accumulate_task_loss_scores(
    x.apply_fn, x.params, x.roles, x.batches(), x.rng, x.task, x.mesh, x.total_images
  ),
}

# The sources that pass over the training data: a run saves their scores for reuse
# (config.gps.scores_from); the others cost less to recompute than to store.
DATA_SCORERS = ('supcon', 'head_ce', 'task_loss')
# The sources whose pass takes one view per image with the task's labels (a pass of
# training batches); the others take the two-view SupCon batches.
SINGLE_VIEW = ('task_loss',)
