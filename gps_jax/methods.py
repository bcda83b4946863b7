"""The methods gps_jax trains, one entry each: role rules, score source, update rule.

Every method runs through the same path (`gps_jax.experiment.run`): its role
rules give each parameter leaf a role (`gps_jax.roles`), its score source
ranks the candidate entries of `select` leaves (`gps_jax.scoring.SCORERS`),
and its update rule (`gps_jax.updates.RULES`) says how the trainable state is
parameterised around the frozen base in the one trainer (`gps_jax.trainer`).
Adding a method is adding one entry to METHODS (plus an update rule, or layers
in gps_jax/models, if it needs new ones).

``update=None`` means the masked parameterisation, in the mode that
``config.train.update_mode`` names: ``sparse`` (the optimizer sees only the
(neurons, K) delta values and the trained leaves) or ``dense`` (full
parameters, masked gradients and updates).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import ml_collections

from gps_jax.models.fitting import ADDED_PARAMS
from gps_jax.roles import GPS_RULES, Rules

FULL_RULES: Rules = ((r'.*', 'train'),)
LINEAR_RULES: Rules = ((r'^head/', 'train'), (r'.*', 'freeze'))
BITFIT_RULES: Rules = (
  (r'^head/', 'train'),
  (r'(^|/)(LayerNorm[^/]*|[^/]*norm[^/]*)/', 'freeze'),
  (r'(^|/)bias$', 'train'),
  (r'.*', 'freeze'),
)
# The base frozen whole; the method's own arrays (factors of the update rule, or the
# layers it adds, named in gps_jax.models.fitting.ADDED_PARAMS) and the head train.
HEAD_RULES: Rules = LINEAR_RULES
ADDED_RULES: Rules = ((r'^head/', 'train'), (ADDED_PARAMS, 'train'), (r'.*', 'freeze'))


def _adapter_model(config: ml_collections.ConfigDict) -> dict:
  return {'adapter_dim': int(config.adapter.dim)}


def _vpt_model(deep: bool) -> Callable[[ml_collections.ConfigDict], dict]:
  def fields(config: ml_collections.ConfigDict) -> dict:
    # The paper's cost comparison (after SSF): 200 shallow prompts, 50 per layer deep.
    return {'vpt_tokens': int(config.vpt.tokens or (50 if deep else 200)), 'vpt_deep': deep}

  return fields


@dataclasses.dataclass(frozen=True)
class Method:
  """One fine-tuning method.

  rules: ordered (regex, role) pairs on '/'-joined leaf paths, first match wins.
  score: what ranks the entries of `select` leaves ('supcon', 'random',
    'magnitude'; a key of `gps_jax.scoring.SCORERS`); None for methods
    without `select` leaves.
  update: the name of its update rule in `gps_jax.updates.RULES`; None = the
    masked rule that ``config.train.update_mode`` names.
  doc: one line for tables and --help.
  model: config -> model fields the method adds to ``config.model`` (the layers
    of adapters and prompts), or None.
  """

  rules: Rules
  score: Optional[str] = None
  update: Optional[str] = None
  doc: str = ''
  model: Optional[Callable[[ml_collections.ConfigDict], dict]] = None


METHODS: dict[str, Method] = {
  'gps': Method(GPS_RULES, 'supcon', doc='per-neuron top-K inputs by summed SupCon gradient'),
  'random': Method(GPS_RULES, 'random', doc='K random inputs per neuron (GPS budget)'),
  'magnitude': Method(GPS_RULES, 'magnitude', doc='per-neuron top-K inputs by |w|'),
  'full': Method(FULL_RULES, doc='every parameter'),
  'linear': Method(LINEAR_RULES, doc='the head only (linear probe)'),
  'bitfit': Method(BITFIT_RULES, doc='biases and the head'),
  'lora': Method(HEAD_RULES, update='lora', doc='low-rank A@B on query/value kernels (config.lora)'),
  'ssf': Method(HEAD_RULES, update='ssf', doc='per-channel scale and shift after each layer'),
  'adapter': Method(ADDED_RULES, doc='bottleneck adapters after attention and MLP (config.adapter)', model=_adapter_model),
  'vpt_shallow': Method(ADDED_RULES, doc='prompt tokens before the first block (config.vpt)', model=_vpt_model(False)),
  'vpt_deep': Method(ADDED_RULES, doc='prompt tokens replaced at every block (config.vpt)', model=_vpt_model(True)),
}  # fmt: skip


def model_fields(config: ml_collections.ConfigDict) -> dict:
  """The model fields the run's method adds (adapters, prompts); {} for most methods."""
  method = get(config.method)
  return method.model(config) if method.model else {}


def get(name: str) -> Method:
  """The registered method `name`; a ValueError listing the known ones otherwise."""
  if name not in METHODS:
    raise ValueError(f'config.method={name!r}: use one of {", ".join(METHODS)}')
  return METHODS[name]


def _family(config: ml_collections.ConfigDict):
  from gps_jax.models.registry import family_of  # the registry imports the models

  return family_of(config.get('model'))  # no model section: the default family (ViT)


def rules(config: ml_collections.ConfigDict) -> Rules:
  """The role rules of a run: ``config.rules`` if given, else the model family's rules for
  ``config.method`` (`gps_jax.models.registry.Family.rules`), else the method's own."""
  method = get(config.method)
  if config.rules:
    return tuple(tuple(r) for r in config.rules)
  family = _family(config)
  if family.rules and config.method not in family.rules:
    raise ValueError(
      f'config.method={config.method!r} is not defined for model family {family.name!r}; '
      f'use one of {", ".join(family.rules)}'
    )
  return tuple(family.rules.get(config.method, method.rules))


def score_source(config: ml_collections.ConfigDict) -> Optional[str]:
  """What ranks the `select` entries: ``config.gps.score`` if given, else the family's source
  for the method (SAM: the task loss for gps), else the method's own."""
  return config.gps.score or _family(config).scores.get(config.method) or get(config.method).score
