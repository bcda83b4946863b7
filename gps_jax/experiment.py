"""One run, as a list of stages: backbone → indices → data → fit → results.

Every method (`gps_jax.methods.METHODS`) goes through this one path; methods
differ only in their role rules, score source and update rule.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from typing import Any, Optional

import jax
import ml_collections

from gps_jax import checkpoint
from gps_jax import files
from gps_jax import mask_stats
from gps_jax import methods
from gps_jax import metrics as metrics_lib
from gps_jax import roles as roles_lib
from gps_jax import scores as scores_lib
from gps_jax import scoring
from gps_jax import selection
from gps_jax import sharding as shard_lib
from gps_jax import trainer as trainer_lib
from gps_jax import tree as tree_lib
from gps_jax import updates
from gps_jax import weights
from gps_jax.config_defaults import VIT_B16_I21K_FILE
from gps_jax.data import input_pipeline as pipeline
from gps_jax.data import splits as splits_lib
from gps_jax.models import fitting
from gps_jax.models.fitting import ADDED_PARAMS
from gps_jax.metrics import say


@dataclasses.dataclass
class Backbone:
  """The model of a run, its flat parameters on the device, roles and mesh."""

  model: Any
  model_config: dict
  num_classes: int
  params: dict
  roles: Any
  mesh: Any
  base_path: str
  base_sha256: Optional[str]


@dataclasses.dataclass(frozen=True)
class Durations:
  """Every duration of a run in steps, from the config's epochs or steps.

  A run trains `total_steps` = `schedule_steps` (the lr schedule: train.epochs) +
  `cooldown_steps` (train.cooldown_epochs at optim.end_lr, as timm's cooldown
  epochs). train.steps > 0 is the whole run, with no cooldown.
  """

  steps_per_epoch: int
  total_steps: int
  schedule_steps: int
  cooldown_steps: int
  warmup_steps: int
  eval_every: int

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, split) -> 'Durations':
    bs = config.data.batch_size
    per_epoch = pipeline.steps_per_epoch(split.num_examples, bs, jax.process_count())
    if per_epoch == 0:
      raise ValueError(
        f'config.data.batch_size={bs} is larger than the training split '
        f'{split.name} ({split.num_examples} examples)'
      )
    schedule = config.train.steps or int(config.train.epochs * per_epoch)
    cooldown = 0 if config.train.steps else int(config.train.cooldown_epochs * per_epoch)
    return cls(
      steps_per_epoch=per_epoch,
      total_steps=schedule + cooldown,
      warmup_steps=int(config.optim.warmup_epochs * per_epoch),
      eval_every=int(config.train.eval_every_epochs * per_epoch),
      schedule_steps=schedule,
      cooldown_steps=cooldown,
    )


def _processes() -> dict:
  return {'process_index': jax.process_index(), 'process_count': jax.process_count()}


def load_params(config: ml_collections.ConfigDict, model, model_config, rng: jax.Array) -> dict:
  """Flat parameters: the checkpoint in `config.model.checkpoint`, or a fresh init.

  Any file `gps_jax.weights.load_checkpoint` reads: vit_jax / gps_jax `.npz`, timm
  `.safetensors` or `.pth`/`.bin`, for ViT, Swin and ConvNeXt.
  """
  path = config.model.checkpoint
  if not path and config.model.require_checkpoint:
    raise ValueError(
      'config.model.checkpoint is empty, but this recipe fine-tunes a pretrained backbone: '
      'pass --config.model.checkpoint=/path/to/the checkpoint (for ViT-B/16: '
      f'{VIT_B16_I21K_FILE}), or --config.model.require_checkpoint=False for random weights'
    )
  if not path:
    return tree_lib.flat(weights.init_params(model, rng))
  # No full init: a jitted init of the whole model costs seconds of CPU per run, and
  # the file gives every parameter but a new head (and a method's added layers).
  params = tree_lib.flat(weights.load_checkpoint(path, model_config, model=model, rng=rng))
  if config.model.reinit_head and any(tree_lib.is_head(p) for p in params):
    params.update(fitting.fresh_head(model, rng=rng))  # a new task gets a new head
  return params


def model_config_of(config: ml_collections.ConfigDict, num_classes: int) -> dict:
  """The model config a run builds: ``config.model`` with the class count, the method's
  own layers (adapters, prompts), ``train.compute_dtype`` and ``train.remat``. The delta's
  manifest keeps it whole."""
  model_config = {
    **config.model.to_dict(),
    'num_classes': num_classes,
    **methods.model_fields(config),
  }
  if config.train.compute_dtype:  # the forward's dtype (parameters stay in theirs)
    model_config['dtype'] = config.train.compute_dtype
  if config.train.remat:  # rematerialised blocks: the same parameters and values
    model_config['remat'] = config.train.remat
  return model_config


def setup_backbone(config: ml_collections.ConfigDict, rng: jax.Array) -> Backbone:
  """Stage 1: the model, its parameters on the device, the roles and the device mesh."""
  num_classes = splits_lib.num_classes(config.data)
  model_config = model_config_of(config, num_classes)
  model = weights.build_model(model_config)
  say(f'[{config.method}] loading backbone {config.model.checkpoint or "(random init)"}')
  # On the device once: the jitted steps would otherwise re-send host arrays every call.
  params = jax.device_put(load_params(config, model, model_config, rng))
  # One device: plain jit. Several (GPUs, hosts, simulated CPUs): the config.mesh shardings.
  mesh = shard_lib.make_mesh(config.mesh) if jax.device_count() > 1 else None
  if mesh is not None:
    shard_lib.check_batch(config.data.batch_size, mesh)
    shard_lib.check_batch(config.data.eval_batch_size, mesh, 'config.data.eval_batch_size')
    if config.gps.batch_size:
      shard_lib.check_batch(config.gps.batch_size, mesh, 'config.gps.batch_size')
    say(f'[{config.method}] mesh {dict(mesh.shape)} over {mesh.size} devices')
  roles = roles_lib.assign_roles(
    params, methods.rules(config), config.fan_in_rules or roles_lib.DEFAULT_FAN_IN_RULES
  )
  # The delta's manifest names the base file by content: a delta only applies to it.
  path = config.model.checkpoint
  sha = checkpoint.file_sha256(path) if path else None
  return Backbone(model, model_config, num_classes, params, roles, mesh, path, sha)


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
      return pipeline.two_view_batches(
        train_split,
        batch_size=config.gps.batch_size or config.data.batch_size,
        image_size=config.model.image_size,
        mean=tuple(config.model.mean),
        std=tuple(config.model.std),
        seed=data_seed,
        interpolation=config.data.select_interpolation,
        **_processes(),
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


def make_iterators(config: ml_collections.ConfigDict, train_split, start_step: int, seed: int):
  """Stage 3: (train iterator, eval sets, final sets, split names) of the run."""
  size = config.model.image_size
  train_image, eval_image = pipeline.recipe_image_fns(
    config.data.recipe,
    size,
    tuple(config.model.mean),
    tuple(config.model.std),
    resize_size=config.data.resize_size or None,
    train_interpolation=config.data.train_interpolation,
    eval_interpolation=config.data.eval_interpolation,
  )
  split_names = {'train': train_split.name}

  def eval_maker(name, role):
    split = splits_lib.open_split(config.data, role)
    split_names[name] = split.name
    return lambda: pipeline.eval_batches(
      split,
      batch_size=config.data.eval_batch_size,
      image_fn=eval_image,
      image_size=size,
      **_processes(),
    )

  eval_sets = {'val': eval_maker('val', config.data.val_split)} if config.data.val_split else {}
  final_sets = {'test': eval_maker('test', config.data.test_split)}
  train_iter = pipeline.train_batches(
    train_split,
    start_step=start_step,
    batch_size=config.data.batch_size,
    image_fn=train_image,
    seed=seed,
    shuffle_buffer=config.data.shuffle_buffer,
    cache=config.data.cache,
    **_processes(),
  )
  return train_iter, eval_sets, final_sets, split_names


def _results(config, stats, tuner, out, durations, timing, info, splits) -> dict:
  """Stage 5's record of the run: results.json."""
  use_ema = bool(tuner.ema_decay)
  # The mask's entries (stats), plus the LoRA / SSF factors, which no role shows.
  extra = _factor_count(out['state'].trainable)
  trained = {
    'trainable': stats['trainable'] + extra,
    'head': stats['trainable'] - stats['backbone_trainable'],
  }
  # Shares are of the pretrained model, as in the paper: a method's added layers
  # (adapters, prompts) count as trainable, not as backbone parameters.
  added = sum(v['params'] for p, v in stats['leaves'].items() if re.search(ADDED_PARAMS, p))
  backbone, total = stats['backbone_params'] - added, stats['total_params'] - added
  results = {
    'method': config.method,
    'dataset': config.data.name,
    'data_source': config.data.source,
    'splits': splits,
    'protocol': (
      'test accuracy after the last step'
      + (' with the EMA weights' if use_ema else '')
      + '; nothing is chosen on test'
    ),
    'k': config.gps.k if stats['selected_entries'] else None,
    'update_mode': tuner.mode,
    'trainable': trained['trainable'],
    'trainable_without_head': trained['trainable'] - trained['head'],
    'total_params': total,
    'share_pct': 100.0 * trained['trainable'] / max(total, 1),
    'share_without_head_pct': 100.0 * (trained['trainable'] - trained['head']) / max(backbone, 1),
    'selection_seconds': timing,
    'selection': info,
    'train_seconds': out['train_seconds'],
    'train_steps': durations.total_steps,
    'test_accuracy': out['final']['test_ema' if use_ema else 'test'],
    'history': out['history'],
  }
  if use_ema:
    results['test_accuracy_raw'] = out['final']['test']
    results['test_accuracy_ema'] = out['final']['test_ema']
  if 'val' in splits:
    suffix = '_ema' if use_ema else ''
    # Model selection (e.g. of hyper-parameters) uses these, never the test split.
    results['best_val_accuracy'] = out['best']['val' + suffix]
    results['final_val_accuracy'] = out['final']['val' + suffix]
  return results


def _factor_count(trainable) -> int:
  """Scalars in the 'factors' part of a LoRA / SSF state (0 for the other rules)."""
  factors = trainable.get('factors', {}) if isinstance(trainable, dict) else {}
  return sum(int(v.size) for v in factors.values())


def update_rule(config: ml_collections.ConfigDict, bb: Backbone, indices: dict):
  """The update rule of the run: the method's own, else ``config.train.update_mode``."""
  name = methods.get(config.method).update or config.train.update_mode
  return updates.make(name, bb.roles, indices, config, seed=config.seed)


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


def write_delta(config, bb: Backbone, tuner, state, workdir: str) -> None:
  """Stage 5a: the task's sparse delta and its manifest in <workdir>/checkpoint."""
  select = roles_lib.leaves_with_role(bb.roles, 'select')
  manifest = checkpoint.make_manifest(
    method=config.method,
    k=config.gps.k if select else None,
    model=bb.model_config,
    base_path=bb.base_path,
    base_sha256=bb.base_sha256,
    select_roles=select,
  )
  if select:  # at layer / net level K is the budget per neuron, not the entries per neuron
    manifest['level'] = config.gps.level
  if getattr(tuner.update, 'spec', None):  # LoRA / SSF: what their factors apply to
    manifest['factors'] = tuner.update.spec
  checkpoint.save_delta(
    os.path.join(workdir, 'checkpoint'), tuner.sparse_result(bb.params, state), manifest
  )


def run(config: ml_collections.ConfigDict, workdir: str) -> tuple[dict, dict]:
  """Runs one experiment; writes results.json, mask_stats.json, metrics.jsonl and the delta.

  Returns (results, the fine-tuned flat parameters).
  """
  os.makedirs(workdir, exist_ok=True)
  rng_init, rng_select, rng_train, rng_data = jax.random.split(jax.random.PRNGKey(config.seed), 4)
  data_seed = int(jax.random.randint(rng_data, (), 0, 2**31 - 1))

  bb = setup_backbone(config, rng_init)
  train_split = splits_lib.open_split(config.data, config.data.train_split)
  ckpts = checkpoint.TrainCheckpoints(
    os.path.join(workdir, 'train_state'), keep=config.train.keep_checkpoints
  )
  t0 = time.perf_counter()
  start_step, bb, indices, info = restore_or_select(
    config, bb, ckpts, train_split, rng_select, data_seed, workdir
  )
  select_seconds = time.perf_counter() - t0
  # After selection: the run's roles and indices give the true entries at any level.
  stats = mask_stats.mask_statistics(bb.roles, config.gps.k, indices=indices)
  stats['level'] = config.gps.level if stats['selected_entries'] else None
  if metrics_lib.is_writer():
    files.write_json(os.path.join(workdir, 'mask_stats.json'), stats)
  say(mask_stats.format_table(stats))

  durations = Durations.from_config(config, train_split)
  tuner = trainer_lib.MaskedFinetuner(
    bb.model.apply,
    bb.roles,
    indices,
    config,
    num_classes=bb.num_classes,
    total_steps=durations.schedule_steps,  # the lr schedule's length; the cooldown follows
    warmup_steps=durations.warmup_steps,
    steps_per_epoch=durations.steps_per_epoch,
    mesh=bb.mesh,
    update=update_rule(config, bb, indices),
  )
  train_iter, eval_sets, final_sets, split_names = make_iterators(
    config, train_split, start_step, data_seed
  )
  say(f'[{config.method}] fine-tuning {durations.total_steps} steps ({tuner.mode} update)')
  meta = {
    'config': config.to_dict(),
    'base': {'path': bb.base_path or None, 'sha256': bb.base_sha256},
    'mask_stats': {k: v for k, v in stats.items() if k != 'leaves'},
  }
  bs = config.data.batch_size
  log = metrics_lib.MetricsLog(workdir)
  try:
    out = trainer_lib.fit(
      tuner,
      bb.params,
      train_iter,
      durations.total_steps,
      rng_train,
      eval_sets=eval_sets,
      final_sets=final_sets,
      eval_every=durations.eval_every,
      log_every=config.train.log_every,
      log=log,
      restore=(lambda target: ckpts.restore_state(start_step, target)) if start_step else None,
      save=lambda step, state: ckpts.save(
        step, state, indices, {**meta, 'data_position': {'step': step, 'examples': step * bs}}
      ),
      save_every=config.train.checkpoint_every_steps,
    )
  finally:
    ckpts.close()  # waits for pending writes; orbax's threads must not outlive the run
    log.close()

  state = out['state']
  if tuner.ema_decay:  # The recipe's model is the moving average: it is what we report and save.
    state = state.replace(trainable=state.ema)
  write_delta(config, bb, tuner, state, workdir)
  results = _results(config, stats, tuner, out, durations, select_seconds, info, split_names)
  if metrics_lib.is_writer():
    files.write_json(os.path.join(workdir, 'results.json'), results)
  return results, tuner.compose_jit(out['frozen'], out['aux'], state.trainable)
