"""What every backbone family shares: config <-> module plumbing and the task head.

A model config is an ``ml_collections.ConfigDict`` with ``name`` (the family),
an optional ``variant`` (a named size) and the module's fields; keys that are
not fields (mean, std, checkpoint, ...) ride along for the rest of gps_jax.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import flax.linen as nn
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


def task_head(features, num_classes: int, dtype):
  """The zero-initialised classifier 'head' of a backbone (call inside its compact
  ``__call__``), or None when num_classes is 0."""
  if not num_classes:
    return None
  return nn.Dense(num_classes, dtype=dtype, kernel_init=nn.initializers.zeros, name='head')(
    features
  )
