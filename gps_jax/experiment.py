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
import jax.numpy as jnp
import ml_collections

from gps_jax import checkpoint
from gps_jax import data as data_lib
from gps_jax import mask_stats
from gps_jax import roles as roles_lib
from gps_jax import selection
from gps_jax import trainer as trainer_lib
from gps_jax.models import vit as vit_lib
from gps_jax.vit_npz import load_vit_npz

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


def load_backbone(config: ml_collections.ConfigDict, model, rng: jax.Array) -> dict:
  """Flat parameters: the checkpoint in `config.model.checkpoint`, or a fresh init."""
  size = config.model.image_size
  init_params = model.init(rng, jnp.zeros((1, size, size, 3)), train=False)['params']
  path = config.model.get('checkpoint', '')
  if not path:
    return roles_lib.flat(init_params)
  params = load_vit_npz(path, model, init_params=init_params)
  if config.model.get('reinit_head', True) and 'head' in init_params:
    params['head'] = init_params['head']  # a new task gets a new head
  return roles_lib.flat(params)


def _split(config, split: str):
  d = config.data
  return data_lib.load_dataset(
    d.name, split, data_dir=d.get('data_dir') or None, seed=d.get('split_seed', 0)
  )


def run(
  config: ml_collections.ConfigDict, workdir: str, printer: Callable[[str], None] = print
) -> dict:
  """Runs one experiment and writes results.json, mask_stats.json and the checkpoint."""
  os.makedirs(workdir, exist_ok=True)
  rng = jax.random.PRNGKey(config.seed)
  rng_init, rng_select, rng_train, rng_data = jax.random.split(rng, 4)
  num_classes = data_lib.num_classes(config.data.name)
  model = vit_lib.build_vit({**config.model.to_dict(), 'num_classes': num_classes})
  mean, std = tuple(config.model.mean), tuple(config.model.std)
  size = config.model.image_size
  data_seed = int(jax.random.randint(rng_data, (), 0, 2**31 - 1))

  printer(
    f'[{config.method}] loading backbone {config.model.get("checkpoint", "") or "(random init)"}'
  )
  # On the device once: the jitted steps would otherwise re-send host arrays every call.
  params = jax.device_put(load_backbone(config, model, rng_init))
  roles = roles_lib.assign_roles(
    params, method_rules(config), config.get('fan_in_rules') or roles_lib.DEFAULT_FAN_IN_RULES
  )
  k = config.gps.k
  stats = mask_stats.mask_statistics(roles, k)
  mask_stats.save(stats, os.path.join(workdir, 'mask_stats.json'))
  printer(mask_stats.format_table(stats))

  train_images, train_labels = _split(config, config.data.train_split)
  bs = config.data.batch_size

  # --- selection -------------------------------------------------------------
  t0 = time.perf_counter()
  has_select = bool(roles_lib.leaves_with_role(roles, 'select'))
  select_info = {}
  if has_select:
    source = config.gps.get('score') or METHOD_SCORES.get(config.method)
    if source == 'supcon':
      printer(f'[{config.method}] selection: one SupCon pass over {len(train_labels)} images')
      batches = data_lib.two_view_batches(
        train_images,
        train_labels,
        batch_size=config.gps.get('batch_size') or bs,
        image_size=size,
        mean=mean,
        std=std,
        seed=data_seed,
      )
      scores, select_info = selection.accumulate_scores(
        model.apply, params, roles, batches, rng_select, temperature=config.gps.temperature
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
  steps_per_epoch = len(train_labels) // bs
  if steps_per_epoch == 0:
    raise ValueError(
      f'config.data.batch_size={bs} is larger than the training split '
      f'({len(train_labels)} examples)'
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
  )

  def eval_maker(split):
    images, labels = _split(config, split)
    return lambda: data_lib.eval_batches(
      images, labels, batch_size=config.data.eval_batch_size, image_size=size, mean=mean, std=std
    )

  val_split = config.data.get('val_split')
  eval_sets = {'val': eval_maker(val_split)} if val_split else {}
  final_sets = {'test': eval_maker(config.data.test_split)}
  train_iter = data_lib.train_batches(
    train_images, train_labels, batch_size=bs, image_size=size, mean=mean, std=std, seed=data_seed
  )
  printer(
    f'[{config.method}] fine-tuning {total_steps} steps '
    f'({config.train.get("update_mode", "sparse")} mode)'
  )
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
  )

  result = tuner.sparse_result(params, out['state'])
  checkpoint.save_delta(os.path.join(workdir, 'checkpoint'), result)
  trainable_count = stats['trainable']
  results = {
    'method': config.method,
    'dataset': config.data.name,
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
    'test_accuracy': out['final']['test'],
    'history': out['history'],
  }
  if eval_sets:
    results['best_val_accuracy'] = out['best']['val']
    results['final_val_accuracy'] = out['final']['val']
  with open(os.path.join(workdir, 'results.json'), 'w') as f:
    json.dump(results, f, indent=1)
  results['params'] = tuner.compose_jit(out['frozen'], out['aux'], out['state'].trainable)
  return results
