"""What every backbone family shares: config <-> module plumbing and the task head.

A model config is an ``ml_collections.ConfigDict`` with ``name`` (the family),
an optional ``variant`` (a named size) and the module's fields; keys that are
not fields (mean, std, checkpoint, ...) ride along for the rest of gps_jax.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections


def named_config(
  family: str,
  variant: str,
  variant_fields: Callable[[str], dict],
  defaults: Mapping,
  overrides: Mapping,
  *,
  label: str,
  **required,
) -> ml_collections.ConfigDict:
  """name, variant, the ``required`` values, the variant's fields and ``defaults``;
  ``overrides`` replace any of them (an unknown key is an error; ``label`` names the
  family in messages)."""
  cfg = dict(name=family, variant=variant, **required, **variant_fields(variant), **defaults)
  unknown = sorted(set(overrides) - set(cfg))
  if unknown:
    raise ValueError(f'unknown {label} config keys {unknown}; known: {sorted(cfg)}')
  cfg.update(overrides)
  return ml_collections.ConfigDict(cfg)


def module_fields(
  model_config,
  family: str,
  field_names: Sequence[str],
  required: Sequence[str],
  variant_fields: Callable[[str], dict],
  *,
  label: str,
  int_tuples: Sequence[str] = (),
) -> dict:
  """The module's keyword arguments from a config (ConfigDict or mapping).

  Fields come from ``variant`` when given; explicit non-None values take
  precedence. ``int_tuples`` become tuples of ints, a dtype string a dtype.
  """
  cfg = model_config.to_dict() if hasattr(model_config, 'to_dict') else dict(model_config)
  if cfg.get('name', family) != family:
    raise ValueError(f'a {label} model needs a config with name={family!r}, got {cfg["name"]!r}')
  fields = variant_fields(cfg['variant']) if cfg.get('variant') else {}
  fields.update({k: cfg[k] for k in field_names if cfg.get(k) is not None})
  missing = [k for k in required if k not in fields]
  if missing:
    raise ValueError(f'{label} model config lacks {missing} (and has no variant providing them)')
  for k in int_tuples:
    fields[k] = tuple(int(v) for v in fields[k])
  if isinstance(fields.get('dtype'), str):
    fields['dtype'] = jnp.dtype(fields['dtype'])
  return fields


# The kernel inits of a new task head (``head_init``, config.model.head_init); the bias
# starts at zero in both, as in timm's ``init_weights_vit_timm`` / Swin / ConvNeXt
# ``_init_weights`` for a Linear.
HEAD_INITS = ('zeros', 'trunc_normal')
TIMM_HEAD_STD = 0.02


def timm_trunc_normal(std: float = TIMM_HEAD_STD, a: float = -2.0, b: float = 2.0):
  """timm's ``trunc_normal_(w, std=std)`` as it really acts: N(0, std^2) clamped to
  [a, b] (absolute bounds, timm's defaults -2 / 2).

  At std 0.02 the bounds are 100 standard deviations out, so nothing is truncated:
  the draw is a plain normal with standard deviation ``std``. flax's
  ``truncated_normal(stddev)`` is another distribution (cut at 2 std and rescaled,
  |w| < 0.046 at 0.02), hence this initialiser. timm samples the normal by inverse
  CDF of a uniform and clamps; jax.random.normal is the same transform on the open
  interval, so the clamp here only mirrors timm's for bounds that could bind.
  """

  def init(key, shape, dtype=jnp.float32):
    w = std * jax.random.normal(key, shape, jnp.float32)
    return jnp.clip(w, a, b).astype(dtype)

  return init


def head_kernel_init(head_init: str):
  """The kernel initialiser named by ``head_init`` (one of HEAD_INITS)."""
  if head_init == 'zeros':
    return nn.initializers.zeros
  if head_init == 'trunc_normal':
    return timm_trunc_normal()
  raise ValueError(f'head_init={head_init!r}: use one of {", ".join(HEAD_INITS)}')


def task_head(features, num_classes: int, dtype, head_init: str = 'zeros'):
  """The classifier 'head' of a backbone (call inside its compact ``__call__``), or
  None when num_classes is 0. Its kernel starts as ``head_init`` says (zeros: the
  demo's; trunc_normal: the reference's timm head) and its bias at zero; the draw
  uses the 'params' rng of the model's init, i.e. the run's init rng."""
  if not num_classes:
    return None
  return nn.Dense(
    num_classes, dtype=dtype, kernel_init=head_kernel_init(head_init),
    bias_init=nn.initializers.zeros, name='head',
  )(features)  # fmt: skip
