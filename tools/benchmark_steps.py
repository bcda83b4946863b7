"""The steps tools/benchmark.py measures, compiled and analysed: a method's train step (with
its eval step's FLOPs) and GPS's selection pass, each with a runner for the timed rounds.

Each step is compiled at the analysis batch (XLA's FLOPs and memory, `gps_jax.step_cost`)
and at the timed batch (one program when they are equal); the runner feeds it random
images of the timed batch.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gps_jax import backbone as backbone_lib
import benchmark_model
from gps_jax import roles as roles_lib
from gps_jax import scoring
from gps_jax import sparse_grad
from gps_jax import step_cost
from gps_jax import tree as tree_lib
from gps_jax import updates

SELECT = 'select'  # the selection pass's name in the timing rounds


@dataclasses.dataclass
class Measured:
  """One step under test: the numbers of its analysis, and a runner for the timed rounds."""

  name: str
  stats: dict
  run: Callable[[], None]
  images: int  # images per timed step


def _images(batch: int, size: int, views: int = 1) -> dict:
  return {
    'image': jax.ShapeDtypeStruct((views * batch, size, size, 3), jnp.float32),
    'label': jax.ShapeDtypeStruct((batch,), jnp.int32),
  }


def _real(abstract: dict, classes: int) -> dict:
  rng = np.random.default_rng(0)
  image, label = abstract['image'], abstract['label']
  return jax.device_put({
    'image': rng.standard_normal(image.shape, np.float32),
    'label': rng.integers(0, classes, label.shape).astype(np.int32),
  })  # fmt: skip


def _runner(compiled, state, args: tuple) -> Callable[[], None]:
  """Runs `compiled(state, *args)` and waits; the donated state is carried over."""
  box = {'state': state}

  def run():
    box['state'], out = compiled(box['state'], *args)
    jax.block_until_ready(out)

  return run


def _compile_both(fn, fn_args: Callable[[int], tuple], batch: int, wall_batch: int) -> tuple:
  """`fn` compiled at `batch` (analysed) and at `wall_batch` (timed; one when they are
  equal); `fn_args(batch size)` gives its arguments."""
  analysed = fn.lower(*fn_args(batch)).compile()
  return analysed, analysed if wall_batch == batch else fn.lower(*fn_args(wall_batch)).compile()


def k_entry_kernels(tuner, bb: backbone_lib.Backbone, state, frozen, aux) -> tuple[int, int]:
  """(kernels on the K-entry path, selected kernels) of a sparse-delta rule's forward,
  traced abstractly as `updates.SparseDelta.forward` runs it; (0, 0) for another rule."""
  rule = tuner.update
  if not isinstance(rule, updates.SparseDelta) or not state.trainable['delta']:
    return 0, 0
  layout, delta = rule.layout, state.trainable['delta']
  params = tree_lib.unflat({**frozen, **state.trainable['train']})
  seen: dict[str, str] = {}
  size = bb.model_config['image_size']

  def forward(params, delta, images):
    entries = {p: (aux[p], v, layout[p]) for p, v in delta.items()}  # fan_in_ndim: static
    out, paths = sparse_grad.forward(
      bb.model.apply, params, entries, rule.grad, images, train=True,
      rngs={'dropout': jax.random.PRNGKey(0)},
    )  # fmt: skip
    seen.update(paths)
    return out

  jax.eval_shape(forward, params, delta, jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
  return sum(v == 'sparse' for v in seen.values()), len(seen)


def eval_flops(tuner, state, frozen, aux, batch: int, size: int) -> float | None:
  """XLA's FLOPs of the eval step at `batch` on the merged (composed) parameters."""
  composed = jax.eval_shape(tuner.compose, frozen, aux, state.trainable)
  return step_cost.flops(tuner.eval_step.lower(composed, _images(batch, size)).compile())


def measure_train(
  name: str, c: ml_collections.ConfigDict, classes: int, batch: int, wall_batch: int, cache: dict
) -> Measured:
  """The train step of run config `c` (and its eval step's FLOPs), compiled and analysed."""
  tuner, bb = benchmark_model.make_tuner(c, classes, cache)
  state, frozen, aux = tuner.init(bb.params)
  size, rng = bb.model_config['image_size'], jax.random.PRNGKey(0)
  train, timed = _compile_both(
    tuner.train_step, lambda b: (state, frozen, aux, _images(b, size), rng), batch, wall_batch
  )
  k_entry, selected = k_entry_kernels(tuner, bb, state, frozen, aux)
  stats = {
    'rule': tuner.mode + (f', K-entry {k_entry}/{selected}' if selected else ''),
    'flops': step_cost.flops(train),
    'memory': step_cost.memory(train),
    'trainable_bytes': step_cost.nbytes(state.trainable),
    'opt_state_bytes': step_cost.nbytes(state.opt_state),
    'eval_flops': eval_flops(tuner, state, frozen, aux, batch, size),
    'k_entry_kernels': k_entry,
    'selected_kernels': selected,
  }
  images = _real(_images(wall_batch, size), classes)
  return Measured(name, stats, _runner(timed, state, (frozen, aux, images, rng)), wall_batch)


def measure_selection(
  c: ml_collections.ConfigDict, classes: int, batch: int, wall_batch: int, chunks: int,
  cache: dict,
) -> Measured:  # fmt: skip
  """GPS's SupCon score step (two views per image, backward in `chunks`) on the plain backbone
  of run config `c`."""
  bb = benchmark_model.backbone(c, classes, cache)
  candidates = list(roles_lib.leaves_with_role(bb.roles, 'select'))
  step = scoring.make_score_step(bb.model.apply, candidates, c.gps.temperature, chunks=chunks)
  scores = {p: jnp.zeros(bb.params[p].shape, jnp.float32) for p in candidates}
  params = jax.device_put(bb.params)
  size, rng = bb.model_config['image_size'], jax.random.PRNGKey(0)
  compiled, timed = _compile_both(
    step, lambda b: (scores, params, _images(b, size, views=2), rng), batch, wall_batch
  )
  stats = {'flops': step_cost.flops(compiled), 'memory': step_cost.memory(compiled)}
  if chunks > 1:  # XLA counts a loop body once: the FLOPs of the unrolled chunks
    unrolled = scoring.make_score_step(
      bb.model.apply, candidates, c.gps.temperature, chunks=chunks, unroll=True
    )
    stats['flops'] = step_cost.flops(
      unrolled.lower(scores, params, _images(batch, size, 2), rng).compile()
    )
  images = _real(_images(wall_batch, size, views=2), classes)
  return Measured(SELECT, stats, _runner(timed, scores, (params, images, rng)), wall_batch)
