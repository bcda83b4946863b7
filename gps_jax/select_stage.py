"""Stage 2 of a run: which entries train — scores, then indices — or the indices a
resumed run restores.

`select_indices` scores the `select` leaves with the method's score source (a pass over
the training split, or another run's saved scores) and picks the entries
(`gps_jax.selection.select`); `restore_or_select` does that for a new run and restores
the indices of a resumed one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import ml_collections

from gps_jax import backbone as backbone_lib
from gps_jax import methods
from gps_jax import roles as roles_lib
from gps_jax import scores as scores_lib
from gps_jax import scoring
from gps_jax import selection
from gps_jax.backbone import Backbone
from gps_jax.data import input_pipeline as pipeline
from gps_jax.metrics import say


def _pass_images(examples: int, batch_size: int) -> int:
  """The images of one pass over `examples` in whole batches (the last partial one dropped)."""
  return examples // batch_size * batch_size


def select_indices(
  config: ml_collections.ConfigDict,
  bb: Backbone,
  train_split,
  rng: jax.Array,
  data_seed: int,
  workdir: Optional[str] = None,
) -> tuple[dict, Any, dict]:
  """Stage 2: (indices, roles after selection, info) of the `select` leaves.

  The scores come from the method's score source, or from the scores another run
  saved (config.gps.scores_from); a pass over the data (supcon, head_ce) saves its
  scores in <workdir>/scores.npz for such reuse. config.gps.level, k and exclude
  then choose the entries (`gps_jax.selection.select`), which change the roles:
  excluded leaves and leaves without an entry are frozen, a layer- or net-level
  leaf is one neuron of fan-in the whole tensor.
  """
  if not roles_lib.leaves_with_role(bb.roles, 'select'):
    return {}, bb.roles, {}
  source = methods.score_source(config)
  if source not in scoring.SCORERS:
    raise ValueError(f'config.gps.score={source!r}: use one of {", ".join(scoring.SCORERS)}')
  level, exclude, scores_from = config.gps.level, config.gps.exclude, config.gps.scores_from
  if scores_from:
    say(f'[{config.method}] selection: {source} scores from {scores_from}')
    skip = set(selection.excluded_leaves(bb.roles, exclude))  # these need no scores
    select = roles_lib.leaves_with_role(bb.roles, 'select')
    needed = {p: r for p, r in select.items() if p not in skip}
    scores, meta = scores_lib.load(
      scores_from, source=source, base_sha256=bb.base_sha256, roles=needed, seed=config.seed
    )
    info = {'scores_from': scores_lib.paths(scores_from)[0], 'pass': meta.get('selection', {})}
  else:
    if source in scoring.DATA_SCORERS:
      say(f'[{config.method}] selection: one {source} pass over {train_split.num_examples} images')

    def batches():
      if source in scoring.SINGLE_VIEW:  # one pass of training batches, the task's labels
        return pipeline.one_pass_batches(
          train_split,
          batch_size=config.gps.batch_size or config.data.batch_size,
          image_fn=backbone_lib.image_fns(config)[0],
          seed=data_seed,
          label_size=config.model.image_size,
          **backbone_lib.processes(),
        )
      return pipeline.two_view_batches(
        train_split,
        batch_size=config.gps.batch_size or config.data.batch_size,
        image_size=config.model.image_size,
        mean=tuple(config.model.mean),
        std=tuple(config.model.std),
        seed=data_seed,
        interpolation=config.data.select_interpolation,
        **backbone_lib.processes(),
      )

    inputs = scoring.ScoreInputs(
      bb.model.apply,
      bb.params,
      bb.roles,
      rng,
      batches,
      temperature=config.gps.temperature,
      mesh=bb.mesh,
      num_classes=bb.num_classes,
      chunks=config.gps.score_chunks,
      total_images=_pass_images(
        train_split.num_examples, config.gps.batch_size or config.data.batch_size
      ),
      task=bb.task,
    )
    scores, info = scoring.SCORERS[source](inputs)
    if (
      workdir and config.gps.save_scores and source in scoring.DATA_SCORERS
    ):  # score once, select many
      meta = scores_lib.make_meta(
        source=source,
        method=config.method,
        base_path=bb.base_path,
        base_sha256=bb.base_sha256,
        seed=config.seed,
        shapes={p: r.shape for p, r in roles_lib.leaves_with_role(bb.roles, 'select').items()},
        selection=info,
        data={'name': config.data.name, 'train_split': train_split.name},
      )
      scores_lib.save(workdir, scores, meta)
  indices, roles = selection.select(scores, config.gps.k, bb.roles, level, exclude)
  jax.block_until_ready(indices)
  info = {**info, **selection.selection_summary(bb.roles, roles, indices, level, exclude)}
  return indices, roles, info


def restore_or_select(
  config, bb, ckpts, train_split, rng, data_seed, workdir: Optional[str] = None
) -> tuple[int, Backbone, dict, dict]:
  """Stage 2: (start step, the backbone with the roles after selection, indices, info);
  a rerun in the same workdir resumes, its roles rebuilt from the restored indices
  (a `select` leaf without indices is frozen; layer / net level: one neuron each)."""
  start_step = ckpts.latest_step() or 0
  if not start_step:
    indices, roles, info = select_indices(config, bb, train_split, rng, data_seed, workdir)
    return 0, dataclasses.replace(bb, roles=roles), indices, info
  ckpts.check_resumable(start_step, config)
  say(f'[{config.method}] resuming from the checkpoint of step {start_step}')
  has_select = bool(roles_lib.leaves_with_role(bb.roles, 'select'))
  indices = ckpts.restore_indices(start_step) if has_select else {}
  roles = selection.roles_after_selection(bb.roles, indices, config.gps.level)
  info = {'restored_from_step': start_step}
  return start_step, dataclasses.replace(bb, roles=roles), indices, info
