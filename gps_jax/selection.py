"""GPS selection: gradient scores and top-K masks at the neuron, layer or net level.

The score of a candidate weight is the signed sum, over one pass of the
training split, of the gradient of the batch-mean SupCon loss on the
backbone's L2-normalised pre-logits features (two augmented views of each
image in one forward pass, model in training mode). At selection time every
neuron keeps the K inputs with the largest |score|.

The paper's ablations (Table 6, Fig. 6) change where the same budget goes
(`select`, ``level``) and what ranks the entries (`SCORERS`):

* level ``neuron`` (GPS): each neuron keeps its top-K inputs;
* level ``layer``: each `select` tensor keeps its top K * neurons entries,
  anywhere in the tensor;
* level ``net``: the top sum(K * neurons) entries over all `select` tensors
  together (a tensor may get none: it is frozen).

Every level selects the neuron level's entry count. A layer- or net-level
selection is stored in the neuron layout with the whole tensor as the fan-in
of ONE neuron: its role becomes ``LeafRole(path, 'select', shape,
fan_in_ndim=len(shape))`` and its indices are int32 (1, n) positions in the
C-order flattened tensor, ascending. Everything downstream (the sparse and
dense update rules, masks, the delta and its manifest) reads that layout
unchanged. `roles_after_selection` rebuilds those roles from the indices (a
resumed run has only the indices).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gps_jax import roles as roles_lib
from gps_jax import tree as tree_lib
from gps_jax import sharding as shard_lib
from gps_jax.losses import l2_normalize, supcon_loss

# Where the budget of K entries per neuron goes (config.gps.level); see the module doc.
LEVELS = ('neuron', 'layer', 'net')

# The kernel of the random linear head of the 'head_ce' score is drawn from
# N(0, HEAD_CE_STD^2) (its bias is zero): a zero head would pass no gradient back.
HEAD_CE_STD = 0.02

LossFn = Callable[[Any, jax.Array, jax.Array, jax.Array], jax.Array]


# ----------------------------------------------------------------------------- score passes


def _make_grad_step(loss_fn: LossFn, candidates: Iterable[str], shardings: tuple | None):
  """A jitted `step(scores, params, batch, rng) -> (scores, loss)` that adds the gradient
  of `loss_fn(nested params, images, labels, rng)` w.r.t. the candidates to `scores`."""
  candidates = tuple(candidates)

  def step(scores, params, batch, rng):
    cand = {p: params[p] for p in candidates}
    rest = {p: v for p, v in params.items() if p not in cand}

    def loss(c):
      return loss_fn(tree_lib.unflat({**rest, **c}), batch['image'], batch['label'], rng)

    value, grads = jax.value_and_grad(loss)(cand)
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


def _supcon_loss(apply_fn: Callable, temperature: float) -> LossFn:
  """SupCon on the L2-normalised features of both views of a two-view batch."""
  # Each process contributes a view-major block [first views; second views] of its
  # own examples, so a global batch is P such blocks, in process order.
  blocks = jax.process_count()

  def loss_fn(params, images, labels, rng):
    _, features = apply_fn({'params': params}, images, train=True, rngs={'dropout': rng})
    z = l2_normalize(features.astype(jnp.float32))
    b = labels.shape[0] // blocks
    z = jnp.swapaxes(z.reshape(blocks, 2, b, -1), 1, 2)  # (P, b, 2 views, D)
    return supcon_loss(z.reshape(blocks * b, 2, -1), labels, temperature)

  return loss_fn


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
) -> Callable:
  """Returns a jitted `step(scores, params, batch, rng) -> (scores, loss)` of SupCon.

  `params` and `scores` are flat {path: array} dicts; `scores` holds the
  candidate leaves only and its buffers are donated. `batch['image']` is
  (2B, H, W, C) — the first B rows are the first views — and
  `batch['label']` is (B,). `shardings` = (scores, params, batch) shardings
  jits the step with explicit in/out shardings on their mesh.
  """
  return _make_grad_step(_supcon_loss(apply_fn, temperature), candidates, shardings)


def _accumulate(
  loss_fn: LossFn,
  params: Mapping[str, jax.Array],
  roles: Any,
  batches: Iterable[Mapping[str, np.ndarray]],
  rng: jax.Array,
  mesh=None,
  views: int = 2,
) -> tuple[dict[str, jax.Array], dict[str, float]]:
  """One pass of `loss_fn` gradients over `batches`, summed (signed) per candidate;
  batch i gets the rng fold_in(rng, i). `views`: the images of a batch the loss uses,
  per image of its labels (for the 'images' count)."""
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
  step = _make_grad_step(loss_fn, candidates, shardings)
  losses, images = [], 0
  for i, batch in enumerate(batches):
    if mesh is not None:  # this process's share -> global arrays over the mesh
      batch = shard_lib.put_batch(batch, mesh)
    scores, loss = step(scores, params, batch, jax.random.fold_in(rng, i))
    losses.append(loss)
    images += int(batch['image'].shape[0]) * views // 2
  if not losses:
    raise ValueError(
      'the selection pass saw no batch: the training split is smaller than '
      'one batch (batches drop the remainder); lower the batch size'
    )
  mean_loss = float(np.mean(jax.device_get(losses)))
  return scores, {'batches': len(losses), 'images': images, 'loss': mean_loss}


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
  return _accumulate(_supcon_loss(apply_fn, temperature), params, roles, batches, rng, mesh)


def accumulate_head_ce_scores(
  apply_fn: Callable,
  params: Mapping[str, jax.Array],
  roles: Any,
  batches: Iterable[Mapping[str, np.ndarray]],
  rng: jax.Array,
  num_classes: int,
  mesh=None,
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
  loss_fn = _head_ce_loss(apply_fn, int(num_classes), head_rng)
  return _accumulate(loss_fn, params, roles, batches, drop_rng, mesh, views=1)


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
  two-view selection batches (a callable that starts the pass), the mesh and the
  number of classes of the task."""

  apply_fn: Callable
  params: Mapping[str, jax.Array]
  roles: Any
  rng: jax.Array
  batches: Callable[[], Iterable[Mapping[str, np.ndarray]]]
  temperature: float = 0.07
  mesh: Any = None
  num_classes: int = 0


def _supcon(x: ScoreInputs):
  return accumulate_scores(
    x.apply_fn, x.params, x.roles, x.batches(), x.rng, temperature=x.temperature, mesh=x.mesh
  )


def _head_ce(x: ScoreInputs):
  scores, info = accumulate_head_ce_scores(
    x.apply_fn, x.params, x.roles, x.batches(), x.rng, x.num_classes, mesh=x.mesh
  )
  return scores, {**info, 'head': f'random linear, N(0, {HEAD_CE_STD}^2), first views'}


# Score sources by name (a method's `score`, or config.gps.score): inputs -> (scores, info).
SCORERS: dict[str, Callable[[ScoreInputs], tuple[dict, dict]]] = {
  'supcon': _supcon,
  'head_ce': _head_ce,
  'random': lambda x: (random_scores(x.roles, x.rng), {}),
  'magnitude': lambda x: (magnitude_scores(x.params, x.roles), {}),
}

# The sources that pass over the training data: a run saves their scores for reuse
# (config.gps.scores_from); the others cost less to recompute than to store.
DATA_SCORERS = ('supcon', 'head_ce')


# ----------------------------------------------------------------------------- selection


@functools.partial(jax.jit, static_argnames=('fan_in_ndim', 'k'))
def _topk_rows(score: jax.Array, fan_in_ndim: int, k: int) -> jax.Array:
  """(neurons, k) int32 indices into the flattened fan-in, ascending per row."""
  fan_in = int(np.prod(score.shape[:fan_in_ndim]))
  rows = jnp.abs(score.reshape(fan_in, -1).T.astype(jnp.float32))
  # lax.top_k returns the lower index first among equal values: deterministic ties.
  _, idx = jax.vmap(lambda r: jax.lax.top_k(r, k))(rows)
  return jnp.sort(idx, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=('n',))
def _top_n(scores: tuple, n: int) -> jax.Array:
  """The n largest |score| over the C-order concatenation of `scores`: (n,) int32
  positions, ascending (ties to the lower position)."""
  flat = jnp.concatenate([jnp.abs(s.astype(jnp.float32)).reshape(-1) for s in scores])
  _, idx = jax.lax.top_k(flat, n)
  return jnp.sort(idx).astype(jnp.int32)


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


def exclude_patterns(exclude: Any) -> list[re.Pattern]:
  """The compiled regexes of config.gps.exclude (a string is one regex)."""
  if isinstance(exclude, str):
    exclude = (exclude,)
  compiled = []
  for i, pattern in enumerate(exclude or ()):
    if not isinstance(pattern, str):
      raise ValueError(f'config.gps.exclude[{i}]={pattern!r}: want a regex string')
    try:
      compiled.append(re.compile(pattern))
    except re.error as e:
      raise ValueError(
        f'config.gps.exclude[{i}]={pattern!r}: not a regular expression ({e})'
      ) from None
  return compiled


def excluded_leaves(roles: Any, exclude: Any) -> list[str]:
  """The `select` leaves whose path a regex of `exclude` finds (re.search), in path
  order. A regex that finds no `select` leaf is an error (a typo would silently
  exclude nothing)."""
  select = list(roles_lib.leaves_with_role(roles, 'select'))
  out = set()
  for i, pattern in enumerate(exclude_patterns(exclude)):
    hits = {p for p in select if pattern.search(p)}
    if not hits:
      example = f', e.g. {select[0]!r}' if select else ''
      raise ValueError(
        f'config.gps.exclude[{i}]={pattern.pattern!r} matches no selected parameter '
        f'({len(select)} paths{example})'
      )
    out |= hits
  return [p for p in select if p in out]


def _flat_scores(scores: Mapping[str, Any]) -> Mapping[str, Any]:
  if all(isinstance(v, (jax.Array, np.ndarray)) for v in scores.values()):
    return scores
  return tree_lib.flat(scores)


def _check_k(k) -> int:
  if isinstance(k, bool) or int(k) != k or k < 1:
    raise ValueError(f'K (gps.k) must be a positive integer, got {k!r}')
  return int(k)


@jax.jit
def _finite(scores: tuple) -> jax.Array:
  return jnp.stack([jnp.all(jnp.isfinite(s)) for s in scores])


def _checked_scores(
  flat_scores: Mapping[str, Any], roles: Mapping[str, roles_lib.LeafRole]
) -> dict[str, Any]:
  """{path: score} of `roles` (flat), each present, of its leaf's shape and finite."""
  out = {}
  for path, role in roles.items():
    if path not in flat_scores:
      raise ValueError(f'no score for selected parameter {path!r}')
    s = flat_scores[path]
    if tuple(s.shape) != role.shape:
      raise ValueError(
        f'score for {path!r} has shape {tuple(s.shape)}, the parameter has {role.shape}'
      )
    out[path] = s
  if out:
    finite = np.asarray(shard_lib.to_host(_finite(tuple(out.values()))))
    for path, ok in zip(out, finite):
      if not ok:
        raise FloatingPointError(f'scores of {path!r} contain NaN or inf')
  return out


def roles_after_selection(roles: Any, indices: Mapping[str, Any], level: str = 'neuron') -> Any:
  """The run's roles once `indices` are chosen at `level`.

  A `select` leaf without indices (excluded, or given no entry at the net level)
  becomes `freeze`; at the layer and net levels a `select` leaf becomes one neuron
  whose fan-in is the whole tensor (fan_in_ndim = its number of axes). Other
  roles are unchanged. The indices must have the layout of `level`: (neurons, K)
  for `neuron`, (1, n) for `layer` and `net`. A resumed run rebuilds its roles
  from the restored indices with this.
  """
  if level not in LEVELS:
    raise ValueError(f'config.gps.level={level!r}: use one of {", ".join(LEVELS)}')
  select = roles_lib.leaves_with_role(roles, 'select')
  extra = sorted(set(indices) - set(select))
  if extra:
    raise ValueError(f'indices of parameters that are not selected: {extra}')

  def one(r: roles_lib.LeafRole) -> roles_lib.LeafRole:
    if r.role != 'select':
      return r
    if r.path not in indices:
      return dataclasses.replace(r, role='freeze', fan_in_ndim=0)
    new = r if level == 'neuron' else dataclasses.replace(r, fan_in_ndim=len(r.shape))
    shape = tuple(np.shape(indices[r.path]))
    if len(shape) != 2 or shape[0] != new.num_neurons or not 1 <= shape[1] <= new.fan_in:
      raise ValueError(
        f'indices of {r.path!r} have shape {shape}; a {level}-level selection of its '
        f'{r.shape} kernel has ({new.num_neurons}, n) with 1 <= n <= {new.fan_in}'
      )
    return new

  return jax.tree.map(one, roles)


def select(
  scores: Mapping[str, Any],
  k: int,
  roles: Any,
  level: str = 'neuron',
  exclude: Any = (),
) -> tuple[dict[str, jax.Array], Any]:
  """The entries with the largest |score| at `level`, and the roles they give the run.

  Every `select` leaf of `roles` not excluded (`exclude`: regexes, re.search on its
  path; see `excluded_leaves`) has the budget K * its neurons:

  * ``neuron``: every neuron keeps its top-K inputs: indices (neurons, K) into the
    neuron's flattened fan-in (GPS);
  * ``layer``: the top K * neurons entries of the tensor: indices (1, K * neurons)
    into the flattened tensor;
  * ``net``: the top sum(K * neurons) entries over all those tensors together
    (concatenated in path order), each tensor's share as (1, n) indices into it; a
    tensor with no entry in the top gets none (and is frozen).

  Indices are int32, ascending per row; ties go to the lower position. With
  exclusion the budget of every other leaf is unchanged, so the net level's total
  is that of the leaves not excluded. Returns (indices, roles after selection: see
  `roles_after_selection`). `scores` is {path: array} or a nested dict with an
  entry for every `select` leaf that is not excluded (others are ignored).
  """
  if level not in LEVELS:
    raise ValueError(f'config.gps.level={level!r}: use one of {", ".join(LEVELS)}')
  k = _check_k(k)
  flat_scores = _flat_scores(scores)
  skip = set(excluded_leaves(roles, exclude))
  kept = {p: r for p, r in roles_lib.leaves_with_role(roles, 'select').items() if p not in skip}
  checked = _checked_scores(flat_scores, kept)
  indices = {}
  if level == 'neuron':
    for p, r in kept.items():
      if k > r.fan_in:
        raise ValueError(
          f'K={k} is larger than the fan-in {r.fan_in} of {p!r} '
          f'(shape {r.shape}); lower gps.k or freeze that parameter'
        )
      indices[p] = _topk_rows(checked[p], r.fan_in_ndim, k)
  elif level == 'layer':
    for p, r in kept.items():
      n = k * r.num_neurons
      if n > r.size:
        raise ValueError(
          f'gps.k={k}: K x {r.num_neurons} neurons = {n} entries is more than the '
          f'{r.size} of {p!r} (shape {r.shape}); lower gps.k or exclude that parameter'
        )
      indices[p] = _top_n((checked[p],), n)[None]
  elif kept:  # net
    n = sum(k * r.num_neurons for r in kept.values())
    sizes = np.array([r.size for r in kept.values()], np.int64)
    total = int(sizes.sum())
    if n > total:
      raise ValueError(
        f'gps.k={k}: K x {n // k} neurons = {n} entries is more than the {total} '
        'entries of the selected parameters; lower gps.k'
      )
    if total >= 2**31:
      raise ValueError(f'the net level ranks at most 2^31 - 1 entries, these have {total}')
    flat_idx = np.asarray(shard_lib.to_host(_top_n(tuple(checked.values()), n)))
    starts = np.concatenate([[0], np.cumsum(sizes)])
    bounds = np.searchsorted(flat_idx, starts)  # flat_idx is ascending
    for j, p in enumerate(kept):
      part = flat_idx[bounds[j] : bounds[j + 1]] - starts[j]
      if part.size:
        indices[p] = jnp.asarray(part.astype(np.int32)[None])
  return indices, roles_after_selection(roles, indices, level)


def selection_summary(
  roles: Any, selected_roles: Any, indices: Mapping[str, Any], level: str, exclude: Any = ()
) -> dict:
  """What a selection did, for results.json: level, entries, excluded leaves and the
  leaves the net level left without an entry."""
  excluded = excluded_leaves(roles, exclude)
  before = roles_lib.leaves_with_role(roles, 'select')
  after = roles_lib.leaves_with_role(selected_roles, 'select')
  return {
    'level': level,
    'entries': int(sum(int(np.size(v)) for v in indices.values())),
    'excluded': excluded,
    'no_entry': [p for p in before if p not in after and p not in excluded],
  }


def select_neuron_indices(scores: Mapping[str, Any], k: int, roles: Any) -> dict[str, jax.Array]:
  """{path: int32 (neurons, k)} top-K of |score| per neuron of every `select`
  leaf: indices into the neuron's flattened fan-in, sorted ascending.

  `scores` is {path: array} or a nested dict with an entry for every `select`
  leaf (others are ignored).
  """
  return select(scores, k, roles, 'neuron')[0]


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
