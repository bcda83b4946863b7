"""Device mesh and shardings: one rule for every array of a run.

The mesh has two axes, ``data`` and ``fsdp`` (``config.mesh``, sizes with -1
for "all remaining devices"). Batches are split over both axes (every device
sees its share of the examples). Every other array — the frozen base, the
trained leaves, the (neurons, K) delta values and indices, the optimizer
moments, the selection scores — is split over ``fsdp`` along its largest axis
that the fsdp size divides (the first such axis on ties: the neuron axis of a
(neurons, K) delta), and replicated when no axis divides; scalars are
replicated. Because the rule depends on the shape alone, an Adam moment is
always laid out like the array it tracks, and the scores like their kernels.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ('data', 'fsdp')


def make_mesh(spec: Mapping[str, int] | None = None, devices=None) -> Mesh:
  """A ('data', 'fsdp') mesh over `devices` (default: all); -1 takes the rest."""
  devices = list(jax.devices() if devices is None else devices)
  spec = dict(spec or {'data': -1, 'fsdp': 1})
  unknown = sorted(set(spec) - set(AXES))
  if unknown:
    raise ValueError(f'config.mesh has unknown axes {unknown}; use {AXES}')
  sizes = [int(spec.get(a, 1)) for a in AXES]
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f'config.mesh={spec}: sizes must be positive, at most one -1')
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f'config.mesh={spec} does not divide {len(devices)} devices')
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ValueError(f'config.mesh={spec} needs {math.prod(sizes)} devices, found {len(devices)}')
  return Mesh(np.array(devices).reshape(sizes), AXES)


def array_spec(shape, fsdp: int) -> P:
  """'fsdp' on the largest axis it divides (first on ties); replicated otherwise."""
  if fsdp == 1 or not shape:
    return P()
  best = None
  for axis, size in enumerate(shape):
    if size % fsdp == 0 and (best is None or size > shape[best]):
      best = axis
  if best is None:
    return P()
  return P(*[('fsdp' if a == best else None) for a in range(len(shape))])


def tree_shardings(mesh: Mesh, tree: Any) -> Any:
  """The NamedSharding of every array (or ShapeDtypeStruct) leaf of `tree`."""
  fsdp = mesh.shape['fsdp']
  return jax.tree.map(lambda x: NamedSharding(mesh, array_spec(np.shape(x), fsdp)), tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (example) axis over every device of the mesh."""
  return NamedSharding(mesh, P(AXES))


def _batch_constraint(mesh: Mesh, batch: int) -> Callable:
  """A flax interceptor: every module output whose leading axis is a multiple of the
  global `batch` (the images, tokens, Swin's windows) stays split over all devices."""
  sharding = NamedSharding(mesh, P(AXES))

  def constrain(y):
    if isinstance(y, jax.Array) and y.ndim and y.shape[0] % batch == 0:
      return jax.lax.with_sharding_constraint(y, sharding)
    return y

  def intercept(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    return jax.tree.map(constrain, out) if context.method_name == '__call__' else out

  return intercept


def batch_sharded(apply_fn: Callable, mesh: Mesh | None) -> Callable:
  """`apply_fn(variables, images, ...)` with its activations kept split by example.

  Without it XLA may partition a weight gradient of an fsdp-sharded kernel by
  all-gathering the whole global batch's activations onto every device, so that
  per-device memory grows with the global batch. Constraining every module output
  (and, by transposition, its cotangent) to the batch layout makes it gather the
  weights and reduce-scatter their gradients instead, as FSDP intends.
  """
  if mesh is None or mesh.size == 1:
    return apply_fn

  @functools.wraps(apply_fn)
  def apply(variables, images, *args, **kwargs):
    with nn.intercept_methods(_batch_constraint(mesh, images.shape[0])):
      return apply_fn(variables, images, *args, **kwargs)

  return apply


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch(batch_size: int, mesh: Mesh, what: str = 'config.data.batch_size') -> None:
  if batch_size % mesh.size:
    raise ValueError(f'{what}={batch_size} must be a multiple of the {mesh.size} mesh devices')


def put_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict:
  """A host batch (this process's share) as global arrays split over the mesh."""
  sharding = batch_sharding(mesh)
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
  }


def put_tree(tree: Any, shardings: Any) -> Any:
  """Places a tree (the same values on every process) on the mesh.

  With several processes each one passes its host copy, from which it keeps the
  shards of its own devices.
  """
  if jax.process_count() == 1:
    return jax.device_put(tree, shardings)
  host = jax.device_get(tree)
  return jax.tree.map(
    lambda x, s: jax.make_array_from_callback(np.shape(x), s, lambda idx: np.asarray(x)[idx]),
    host,
    shardings,
  )


def to_host(tree: Any) -> Any:
  """numpy copies of a tree of (possibly multi-process) arrays, on every process."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils

  return multihost_utils.process_allgather(tree, tiled=True)
