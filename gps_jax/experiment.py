"""One run: load backbone → select → fine-tune → evaluate → write results.

Every method (gps, random, magnitude, full, linear, bitfit) goes through this
one path; they differ only in their role rules and score source.
"""

from __future__ import annotations

import json
import os
import time
from typing import Callable

import jax
import ml_collections

from gps_jax import checkpoint
from gps_jax import mask_stats
from gps_jax import roles as roles_lib
from gps_jax import tree as tree_lib
from gps_jax import selection
from gps_jax import sharding as shard_lib
from gps_jax import trainer as trainer_lib
from gps_jax import weights
from gps_jax.config_defaults import VIT_B16_I21K_FILE
from gps_jax.data import input_pipeline as pipeline
from gps_jax.data import splits as splits_lib

# The score each method selects by (methods without `select` leaves need none).
METHOD_SCORES = {'gps': 'supcon', 'random': 'random', 'magnitude': 'magnitude'}


def method_rules(config: ml_collections.ConfigDict):
  """The role rules of the run: `config.rules` if given, else the method's preset."""
  if config.get('rules'):
    return tuple(tuple(r) for r in config.rules)
  if config.method not in roles_lib.METHOD_RULES:
    raise ValueError(
      f'config.method={config.method!r}: use one of '
      f'{sorted(roles_lib.METHOD_RULES)} or give config.rules'
    )
  return roles_lib.METHOD_RULES[config.method]


def load_backbone(config: ml_collections.ConfigDict, model, model_config, rng: jax.Array) -> dict:
  """Flat parameters: the checkpoint in `config.model.checkpoint`, or a fresh init.

  Any file `gps_jax.weights.load_checkpoint` reads: vit_jax / gps_jax `.npz`, timm
  `.safetensors` or `.pth`/`.bin`, for ViT, Swin and ConvNeXt.
  """
  path = config.model.get('checkpoint', '')
  if not path and config.model.get('require_checkpoint', False):
    raise ValueError(
      'config.model.checkpoint is empty, but this recipe fine-tunes a pretrained backbone: '
      'pass --config.model.checkpoint=/path/to/the checkpoint (for ViT-B/16: '
      f'{VIT_B16_I21K_FILE}), or --config.model.require_checkpoint=False for random weights'
    )
  init_params = weights.init_params(model, rng)
  if not path:
    return tree_lib.flat(init_params)
  params = weights.load_checkpoint(path, model_config, model=model, init=init_params)
  if config.model.get('reinit_head', True) and 'head' in init_params:
    params['head'] = init_params['head']  # a new task gets a new head
  return tree_lib.flat(params)


# Config keys a resumed run may change: they do not alter what is trained.
_RESUME_FREE = ('train.log_every', 'train.checkpoint_every_steps', 'train.keep_checkpoints')


def _flat_config(d, prefix=''):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat_config(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def _check_resumable(ckpts, step: int, config: ml_collections.ConfigDict) -> None:
  """Refuses to resume checkpoints written under another config."""
  saved = _flat_config(ckpts.restore_meta(step).get('config', {}))
  now = _flat_config(checkpoint.json_safe(config.to_dict()))
  changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
  changed = [k for k in changed if k not in _RESUME_FREE]
  if changed:
    raise ValueError(
      f'{ckpts.directory} holds checkpoints of a run with another config (changed: '
      f'{", ".join(changed)}); use a new --workdir, or delete that directory to start over'
    )


def _processes() -> dict:
  return {'process_index': jax.process_index(), 'process_count': jax.process_count()}


def run(
  config: ml_collections.ConfigDict, workdir: str, printer: Callable[[str], None] = print
) -> dict:
  """Runs one experiment and writes results.json, mask_stats.json and the checkpoint."""
  os.makedirs(workdir, exist_ok=True)
  rng = jax.random.PRNGKey(config.seed)
  rng_init, rng_select, rng_train, rng_data = jax.random.split(rng, 4)
  num_classes = splits_lib.num_classes(config.data)
  model_config = {**config.model.to_dict(), 'num_classes': num_classes}
  model = weights.build_model(model_config)
  mean, std = tuple(config.model.mean), tuple(config.model.std)
  size = config.model.image_size
  train_image, eval_image = pipeline.recipe_image_fns(
    config.data.get('recipe', 'resize'),
    size,
    mean,
    std,
    resize_size=config.data.get('resize_size') or None,
  )
  data_seed = int(jax.random.randint(rng_data, (), 0, 2**31 - 1))

  printer(
    f'[{config.method}] loading backbone {config.model.get("checkpoint", "") or "(random init)"}'
  )
  # On the device once: the jitted steps would otherwise re-send host arrays every call.
  params = jax.device_put(load_backbone(config, model, model_config, rng_init))
  # One device: plain jit. Several (GPUs, hosts, simulated CPUs): the config.mesh shardings.
  mesh = shard_lib.make_mesh(config.get('mesh')) if jax.device_count() > 1 else None
  if mesh is not None:
    shard_lib.check_batch(config.data.batch_size, mesh)
    shard_lib.check_batch(config.data.eval_batch_size, mesh, 'config.data.eval_batch_size')
    if config.gps.get('batch_size'):
      shard_lib.check_batch(config.gps.batch_size, mesh, 'config.gps.batch_size')
    printer(f'[{config.method}] mesh {dict(mesh.shape)} over {mesh.size} devices')
  # The delta's manifest names the base file by content: a delta only applies to it.
  base_path = config.model.get('checkpoint', '')
  base_sha256 = checkpoint.file_sha256(base_path) if base_path else None
  roles = roles_lib.assign_roles(
    params, method_rules(config), config.get('fan_in_rules') or roles_lib.DEFAULT_FAN_IN_RULES
  )
  k = config.gps.k
  stats = mask_stats.mask_statistics(roles, k)
  writer = jax.process_index() == 0  # one process writes files and logs
  if writer:
    mask_stats.save(stats, os.path.join(workdir, 'mask_stats.json'))
  printer(mask_stats.format_table(stats))

  train_split = splits_lib.open_split(config.data, config.data.train_split)
  bs = config.data.batch_size

  # --- selection -------------------------------------------------------------
  t0 = time.perf_counter()
  has_select = bool(roles_lib.leaves_with_role(roles, 'select'))
  select_info = {}
  # A run restarted in the same workdir continues from its latest checkpoint.
  ckpts = checkpoint.TrainCheckpoints(
    os.path.join(workdir, 'train_state'), keep=config.train.get('keep_checkpoints', 2)
  )
  start_step = ckpts.latest_step() or 0
  if start_step:
    _check_resumable(ckpts, start_step, config)
    printer(f'[{config.method}] resuming from the checkpoint of step {start_step}')
    indices = ckpts.restore_indices(start_step) if has_select else {}
    select_info = {'restored_from_step': start_step}
  elif has_select:
    source = config.gps.get('score') or METHOD_SCORES.get(config.method)
    if source == 'supcon':
      printer(
        f'[{config.method}] selection: one SupCon pass over {train_split.num_examples} images'
      )
      batches = pipeline.two_view_batches(
        train_split,
        batch_size=config.gps.get('batch_size') or bs,
        image_size=size,
        mean=mean,
        std=std,
        seed=data_seed,
        **_processes(),
      )
      scores, select_info = selection.accumulate_scores(
        model.apply,
        params,
        roles,
        batches,
        rng_select,
        temperature=config.gps.temperature,
        mesh=mesh,
      )
    elif source == 'random':
      scores = selection.random_scores(roles, rng_select)
    elif source == 'magnitude':
      scores = selection.magnitude_scores(params, roles)
    else:
      raise ValueError(f'config.gps.score={source!r}: use one of {selection.SCORE_SOURCES}')
    indices = selection.select_neuron_indices(scores, k, roles)
    jax.block_until_ready(indices)
    del scores
  else:
    indices = {}
  select_seconds = time.perf_counter() - t0

  # --- fine-tuning -------------------------------------------------------------
  steps_per_epoch = pipeline.steps_per_epoch(train_split.num_examples, bs, jax.process_count())
  if steps_per_epoch == 0:
    raise ValueError(
      f'config.data.batch_size={bs} is larger than the training split '
      f'{train_split.name} ({train_split.num_examples} examples)'
    )
  total_steps = config.train.get('steps') or config.train.epochs * steps_per_epoch
  cfg = config.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.optim.warmup_steps = int(config.optim.get('warmup_epochs', 0) * steps_per_epoch)
  tuner = trainer_lib.MaskedFinetuner(
    model.apply,
    roles,
    indices,
    cfg,
    num_classes=num_classes,
    total_steps=total_steps,
    mode=config.train.get('update_mode', 'sparse'),
    mesh=mesh,
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

  val_split = config.data.get('val_split')
  eval_sets = {'val': eval_maker('val', val_split)} if val_split else {}
  final_sets = {'test': eval_maker('test', config.data.test_split)}
  train_iter = pipeline.train_batches(
    train_split,
    start_step=start_step,
    batch_size=bs,
    image_fn=train_image,
    seed=data_seed,
    shuffle_buffer=config.data.get('shuffle_buffer', 0),
    cache=config.data.get('cache', True),
    **_processes(),
  )
  printer(
    f'[{config.method}] fine-tuning {total_steps} steps '
    f'({config.train.get("update_mode", "sparse")} mode)'
  )
  meta = {
    'config': config.to_dict(),
    'base': {'path': base_path or None, 'sha256': base_sha256},
    'mask_stats': {k: v for k, v in stats.items() if k != 'leaves'},
  }
  try:
    out = trainer_lib.fit(
      tuner,
      params,
      train_iter,
      total_steps,
      rng_train,
      eval_sets=eval_sets,
      final_sets=final_sets,
      eval_every=int(config.train.get('eval_every_epochs', 0) * steps_per_epoch),
      log_every=config.train.get('log_every', 50),
      printer=printer,
      restore=(lambda target: ckpts.restore_state(start_step, target)) if start_step else None,
      save=lambda step, state: ckpts.save(
        step, state, indices, {**meta, 'data_position': {'step': step, 'examples': step * bs}}
      ),
      save_every=config.train.get('checkpoint_every_steps', 0),
    )
  finally:
    ckpts.close()  # waits for pending writes; orbax's threads must not outlive the run

  state = out['state']
  use_ema = bool(tuner.ema_decay)
  if use_ema:  # The recipe's model is the moving average: it is what we report and save.
    state = state.replace(trainable=state.ema)
  result = tuner.sparse_result(params, state)
  manifest = checkpoint.make_manifest(
    method=config.method,
    k=k if has_select else None,
    model=model_config,
    base_path=base_path,
    base_sha256=base_sha256,
    select_roles=roles_lib.leaves_with_role(roles, 'select'),
  )
  checkpoint.save_delta(os.path.join(workdir, 'checkpoint'), result, manifest)
  trainable_count = stats['trainable']
  results = {
    'method': config.method,
    'dataset': config.data.name,
    'data_source': config.data.get('source', 'memory'),
    'splits': split_names,
    'protocol': (
      'test accuracy after the last step'
      + (' with the EMA weights' if use_ema else '')
      + '; nothing is chosen on test'
    ),
    'k': k if has_select else None,
    'update_mode': tuner.mode,
    'trainable': trainable_count,
    'trainable_without_head': stats['backbone_trainable'],
    'total_params': stats['total_params'],
    'share_pct': stats['share_pct'],
    'share_without_head_pct': stats['share_without_head_pct'],
    'selection_seconds': select_seconds,
    'selection': select_info,
    'train_seconds': out['train_seconds'],
    'train_steps': total_steps,
    'test_accuracy': out['final']['test_ema' if use_ema else 'test'],
    'history': out['history'],
  }
  if use_ema:
    results['test_accuracy_raw'] = out['final']['test']
    results['test_accuracy_ema'] = out['final']['test_ema']
  if eval_sets:
    suffix = '_ema' if use_ema else ''
    # Model selection (e.g. of hyper-parameters) uses these, never the test split.
    results['best_val_accuracy'] = out['best']['val' + suffix]
    results['final_val_accuracy'] = out['final']['val' + suffix]
  if writer:
    with open(os.path.join(workdir, 'results.json'), 'w') as f:
      json.dump(results, f, indent=1)
  results['params'] = tuner.compose_jit(out['frozen'], out['aux'], state.trainable)
  return results
