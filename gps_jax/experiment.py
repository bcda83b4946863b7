"""One run, as a list of stages: backbone → indices → data → fit → results.

Every method (`gps_jax.methods.METHODS`) goes through this one path; methods
differ only in their role rules, score source and update rule. The first two stages
have modules of their own: `gps_jax.backbone` and `gps_jax.select_stage`.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time

import jax
import ml_collections

from gps_jax import backbone as backbone_lib
from gps_jax import checkpoint
from gps_jax import files
from gps_jax import mask_stats
from gps_jax import methods
from gps_jax import metrics as metrics_lib
from gps_jax import roles as roles_lib
from gps_jax import select_stage
from gps_jax import trainer as trainer_lib
from gps_jax import updates
from gps_jax.data import input_pipeline as pipeline
from gps_jax.data import splits as splits_lib
from gps_jax.models.fitting import ADDED_PARAMS
from gps_jax.backbone import Backbone, setup_backbone
from gps_jax.metrics import say


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


def eval_batches(config: ml_collections.ConfigDict, role: str):
  """(the split's name, a function that gives one pass of its eval batches) of the split
  `role` ('val', 'test' or a split name) of the configured data set."""
  split = splits_lib.open_split(config.data, role)
  _, eval_image = backbone_lib.image_fns(config)
  return split.name, lambda: pipeline.eval_batches(
    split,
    batch_size=config.data.eval_batch_size,
    image_fn=eval_image,
    image_size=config.model.image_size,
    label_size=config.model.image_size,  # segmentation masks at the input's size
    **backbone_lib.processes(),
  )


def make_iterators(config: ml_collections.ConfigDict, train_split, start_step: int, seed: int):
  """Stage 3: (train iterator, eval sets, final sets, split names) of the run."""
  train_image, _ = backbone_lib.image_fns(config)
  split_names = {'train': train_split.name}

  def eval_maker(name, role):
    split_names[name], batches = eval_batches(config, role)
    return batches

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
    label_size=config.model.image_size,
    **backbone_lib.processes(),
  )
  return train_iter, eval_sets, final_sets, split_names


def _results(config, stats, tuner, out, durations, timing, info, splits) -> dict:
  """Stage 5's record of the run: results.json."""
  use_ema = bool(tuner.ema_decay)
  metric = tuner.task.metric  # accuracy, or dice (segmentation; its iou comes too)
  test = 'test_ema' if use_ema else 'test'
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
    'metric': metric,
    'protocol': (
      f'test {metric} after the last step'
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
    # test_accuracy; for segmentation test_dice and test_iou (mDice, mIoU).
    **{f'test_{m}': v for m, v in out['final_metrics'][test].items()},
    'history': out['history'],
  }
  if out['untuned']:  # the starting weights' metrics (config.train.eval_untuned)
    results['untuned'] = {f'{s}_{m}': v for s, vals in out['untuned'].items() for m, v in vals.items()}
  if use_ema:
    results[f'test_{metric}_raw'] = out['final']['test']
    results[f'test_{metric}_ema'] = out['final']['test_ema']
  if 'val' in splits:
    suffix = '_ema' if use_ema else ''
    # Model selection (e.g. of hyper-parameters) uses these, never the test split.
    results[f'best_val_{metric}'] = out['best']['val' + suffix]
    results[f'final_val_{metric}'] = out['final']['val' + suffix]
  return results


def _factor_count(trainable) -> int:
  """Scalars in the 'factors' part of a LoRA / SSF state (0 for the other rules)."""
  factors = trainable.get('factors', {}) if isinstance(trainable, dict) else {}
  return sum(int(v.size) for v in factors.values())


def update_rule(config: ml_collections.ConfigDict, bb: Backbone, indices: dict):
  """The update rule of the run: the method's own, else ``config.train.update_mode``."""
  name = methods.get(config.method).update or config.train.update_mode
  return updates.make(name, bb.roles, indices, config, seed=config.seed)


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


def run_keys(seed: int) -> tuple[jax.Array, jax.Array, jax.Array, int]:
  """(init, selection and training keys, data seed) of a run with `seed`: a notebook that
  runs the stages itself gets the run's own randomness (the same selection pass)."""
  rng_init, rng_select, rng_train, rng_data = jax.random.split(jax.random.PRNGKey(seed), 4)
  return rng_init, rng_select, rng_train, int(jax.random.randint(rng_data, (), 0, 2**31 - 1))


def run(
  config: ml_collections.ConfigDict, workdir: str, log: metrics_lib.MetricsLog | None = None
) -> tuple[dict, dict]:
  """Runs one experiment; writes results.json, mask_stats.json, metrics.jsonl and the delta.

  `log` receives the run's metrics (default: a `MetricsLog` of `workdir`; a notebook passes
  `gps_jax.notebook.LiveCurves`); the run closes it. Returns (results, the fine-tuned flat
  parameters).
  """
  os.makedirs(workdir, exist_ok=True)
  rng_init, rng_select, rng_train, data_seed = run_keys(config.seed)

  bb = setup_backbone(config, rng_init)
  train_split = splits_lib.open_split(config.data, config.data.train_split)
  ckpts = checkpoint.TrainCheckpoints(
    os.path.join(workdir, 'train_state'), keep=config.train.keep_checkpoints
  )
  t0 = time.perf_counter()
  start_step, bb, indices, info = select_stage.restore_or_select(
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
    task=bb.task,
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
  log = log if log is not None else metrics_lib.MetricsLog(workdir)
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
      eval_untuned=config.train.eval_untuned,
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
