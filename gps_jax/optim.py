"""Optimizer and learning-rate schedule from `config.optim`."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

OPTIMIZERS = ('adam', 'adamw', 'sgd')
# config.optim.schedule: 'warmup_cosine' (per step, cosine after the warm-up) |
# 'timm_epoch_cosine' (the reference's timm CosineLRScheduler, per epoch).
SCHEDULES = ('warmup_cosine', 'timm_epoch_cosine')

# The outer keys of the sparse update rule's trainable state ({'train': {path: array},
# 'delta': {path: (neurons, K) array}}, gps_jax.sparse): not part of a parameter path.
# The parts of a structured trainable state (gps_jax.updates): their key is no path.
_PART_KEYS = frozenset({'train', 'delta', 'factors'})


def schedule(
  cfg: ml_collections.ConfigDict, total_steps: int, warmup_steps: int, steps_per_epoch: int = 0
) -> optax.Schedule:
  """The learning rate per step, named by `cfg.schedule` (default 'warmup_cosine').

  `total_steps` is the length of the schedule (the epochs, not the cooldown:
  after it both schedules stay at `end_lr`); `steps_per_epoch` is needed by
  'timm_epoch_cosine' only.
  """
  name = cfg.schedule
  if name == 'warmup_cosine':
    return _warmup_cosine(cfg, total_steps, warmup_steps)
  if name == 'timm_epoch_cosine':
    return timm_epoch_cosine(cfg, total_steps, warmup_steps, steps_per_epoch)
  raise ValueError(f'config.optim.schedule={name!r}: use one of {", ".join(SCHEDULES)}')


def _warmup_cosine(cfg, total_steps: int, warmup_steps: int) -> optax.Schedule:
  """Per step: linear warm-up from `warmup_init_lr` to `lr`, then cosine decay to `end_lr`."""
  warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
    init_value=cfg.warmup_init_lr,
    peak_value=cfg.lr,
    warmup_steps=warmup_steps,
    decay_steps=max(total_steps, warmup_steps + 1),
    end_value=cfg.end_lr,
  )


def timm_epoch_lr(
  epoch: int, *, lr: float, lr_min: float, t_initial: float, warmup_t: float, warmup_lr_init: float
) -> float:
  """The lr of one epoch under timm's CosineLRScheduler as the reference ran it.

  timm (0.6.5 and 1.0.x alike) `_get_lr(t)` with warmup_prefix=False, k_decay=1,
  cycle_limit=1 and no noise: the cosine runs from epoch 0 with the warm-up inside
  it, so the warm-up ends below the peak (epoch 10 of 100: 0.976 lr), and after
  `t_initial` epochs (timm's cooldown) the lr is `lr_min`.
  """
  if epoch < warmup_t:
    return warmup_lr_init + epoch * (lr - warmup_lr_init) / warmup_t
  if epoch >= t_initial:  # timm: cycle i = t // t_initial >= cycle_limit 1
    return lr_min
  return lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * epoch / t_initial))


def timm_epoch_cosine(
  cfg, total_steps: int, warmup_steps: int, steps_per_epoch: int
) -> optax.Schedule:
  """The reference's schedule (train_gps.py on timm's `create_scheduler`): the lr is set
  once per epoch, epoch = step // steps_per_epoch, by `timm_epoch_lr` with
  t_initial = total_steps / steps_per_epoch epochs and warmup_t = warmup_steps /
  steps_per_epoch.

  The per-epoch values are computed here in float64, as timm computes them in
  Python, and looked up by epoch; the last entry (`end_lr`) holds for every later
  step, i.e. through the cooldown.
  """
  if steps_per_epoch <= 0:
    raise ValueError(
      "config.optim.schedule='timm_epoch_cosine' sets the lr per epoch: it needs the "
      f'number of steps per epoch, got {steps_per_epoch}'
    )
  t_initial = max(total_steps, 1) / steps_per_epoch
  warmup_t = warmup_steps / steps_per_epoch
  timm = {'lr': cfg.lr, 'lr_min': cfg.end_lr, 'warmup_lr_init': cfg.warmup_init_lr}
  epochs = range(math.ceil(t_initial) + 1)
  lrs = [timm_epoch_lr(t, t_initial=t_initial, warmup_t=warmup_t, **timm) for t in epochs]
  table = np.asarray(lrs, np.float32)

  def lr_fn(step):
    epoch = jnp.minimum(jnp.asarray(step) // steps_per_epoch, len(table) - 1)
    return jnp.asarray(table)[epoch]

  return lr_fn


def optimizer(cfg: ml_collections.ConfigDict, lr: optax.Schedule) -> optax.GradientTransformation:
  """Adam / AdamW (decoupled weight decay) / SGD with momentum, optional clipping.

  `adam` with `weight_decay` 0 is the reference's plain Adam. Each leaf's decay is
  `weight_decay` times the multiplier of the first `weight_decay_rules` entry its
  path matches.
  """
  name, wd = cfg.name, cfg.weight_decay
  decay = decay_by_rules(wd, cfg.weight_decay_rules)
  if name in ('adam', 'adamw'):
    # optax.adamw's chain, with the rule-scaled decay in place of its uniform one.
    tx = optax.chain(
      optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps),
      decay,
      optax.scale_by_learning_rate(lr),
    )
  elif name == 'sgd':
    # Coupled decay: added to the gradient before momentum, as torch's SGD does.
    tx = optax.chain(decay, optax.sgd(lr, momentum=cfg.momentum))
  else:
    raise ValueError(f'config.optim.name={name!r}: use one of {", ".join(OPTIMIZERS)}')
  if cfg.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), tx)
  return tx


def leaf_path(key_path: Sequence[Any], tree: Any) -> str:
  """The '/'-joined parameter path of a leaf of the optimizer's tree.

  Dense mode: a flat {path: array}; sparse mode: {'train': {...}, 'delta': {...}};
  LoRA / SSF: {'train': {...}, 'factors': {...}}. The outer key of a part is dropped
  so that one rule table serves all (a factor's path is its leaf's or module's path
  plus lora_a, lora_b, ssf_scale or ssf_shift).
  """
  names = [str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in key_path]
  if isinstance(tree, dict) and 'train' in tree and set(tree) <= _PART_KEYS and names:
    names = names[1:]
  return '/'.join(names)


def decay_multipliers(tree: Any, rules: Iterable[Sequence[Any]]) -> Any:
  """A pytree of Python floats with the structure of `tree`: each leaf's multiplier.

  First match (re.search) wins; a path no rule matches is an error, as for the
  role rules, so that a rule table says what happens to every parameter.
  """
  compiled = []
  for i, rule in enumerate(rules):
    if len(rule) != 2:
      raise ValueError(
        f'config.optim.weight_decay_rules #{i}: want (regex, multiplier), got {rule!r}'
      )
    compiled.append((re.compile(rule[0]), float(rule[1])))

  def multiplier(key_path, _):
    path = leaf_path(key_path, tree)
    for pattern, m in compiled:
      if pattern.search(path):
        return m
    raise ValueError(
      f'no config.optim.weight_decay_rules entry matches parameter {path!r}; '
      "end the rules with a catch-all such as ('.*', 1.0)"
    )

  return jax.tree_util.tree_map_with_path(multiplier, tree)


def decay_by_rules(
  weight_decay: float, rules: Iterable[Sequence[Any]]
) -> optax.GradientTransformation:
  """optax.add_decayed_weights with a per-leaf multiplier from `rules`.

  Adds `weight_decay * multiplier * params` to the updates (a multiplier of 0
  leaves the leaf's update untouched). A multiplier of 1 computes exactly
  `g + weight_decay * p`, as optax.add_decayed_weights does, so configs that
  decay everything train bit for bit as before.
  """
  rules = tuple(tuple(r) for r in rules)

  def init_fn(params):
    decay_multipliers(params, rules)  # a path without a rule fails here, before training
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError('weight decay needs the params argument of the optimizer update')
    if weight_decay == 0.0:  # what add_decayed_weights(0.0) does
      return updates, state
    scale = jax.tree.map(lambda m: weight_decay * m, decay_multipliers(updates, rules))
    updates = jax.tree.map(lambda g, p, s: g if s == 0.0 else g + s * p, updates, params, scale)
    return updates, state

  return optax.GradientTransformation(init_fn, update_fn)
