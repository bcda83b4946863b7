"""Optimizer and learning-rate schedule from `config.optim`."""

from __future__ import annotations

import ml_collections
import optax

OPTIMIZERS = ('adam', 'adamw', 'sgd')


def schedule(cfg: ml_collections.ConfigDict, total_steps: int, warmup_steps: int) -> optax.Schedule:
  """Linear warm-up from `warmup_init_lr` to `lr`, then cosine decay to `end_lr`."""
  warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
    init_value=cfg.get('warmup_init_lr', 1e-7),
    peak_value=cfg.lr,
    warmup_steps=warmup_steps,
    decay_steps=max(total_steps, warmup_steps + 1),
    end_value=cfg.get('end_lr', 1e-8),
  )


def optimizer(cfg: ml_collections.ConfigDict, lr: optax.Schedule) -> optax.GradientTransformation:
  """Adam / AdamW (decoupled weight decay) / SGD with momentum, optional clipping.

  `adam` with `weight_decay` 0 is the reference's plain Adam.
  """
  name = cfg.get('name', 'adam')
  wd = cfg.get('weight_decay', 0.0)
  if name in ('adam', 'adamw'):
    tx = optax.adamw(
      lr, b1=cfg.get('b1', 0.9), b2=cfg.get('b2', 0.999), eps=cfg.get('eps', 1e-8), weight_decay=wd
    )
  elif name == 'sgd':
    tx = optax.chain(
      optax.add_decayed_weights(wd) if wd else optax.identity(),
      optax.sgd(lr, momentum=cfg.get('momentum', 0.9)),
    )
  else:
    raise ValueError(f'config.optim.name={name!r}: use one of {", ".join(OPTIMIZERS)}')
  clip = cfg.get('grad_clip_norm', None)
  if clip:
    tx = optax.chain(optax.clip_by_global_norm(clip), tx)
  return tx
