"""The methods gps_jax trains, one entry each: role rules, score source, update rule.

Every method runs through the same path (`gps_jax.experiment.run`): its role
rules give each parameter leaf a role (`gps_jax.roles`), its score source
ranks the candidate entries of `select` leaves (`gps_jax.selection.SCORERS`),
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
from typing import Optional

import ml_collections

from gps_jax.roles import GPS_RULES, Rules

FULL_RULES: Rules = ((r'.*', 'train'),)
LINEAR_RULES: Rules = ((r'^head/', 'train'), (r'.*', 'freeze'))
BITFIT_RULES: Rules = (
  (r'^head/', 'train'),
  (r'(^|/)(LayerNorm[^/]*|[^/]*norm[^/]*)/', 'freeze'),
  (r'(^|/)bias$', 'train'),
  (r'.*', 'freeze'),
)


@dataclasses.dataclass(frozen=True)
class Method:
  """One fine-tuning method.

  rules: ordered (regex, role) pairs on '/'-joined leaf paths, first match wins.
  score: what ranks the entries of `select` leaves ('supcon', 'random',
    'magnitude'; a key of `gps_jax.selection.SCORERS`); None for methods
    without `select` leaves.
  update: the name of its update rule in `gps_jax.updates.RULES`; None = the
    masked rule that ``config.train.update_mode`` names.
  doc: one line for tables and --help.
  """

  rules: Rules
  score: Optional[str] = None
  update: Optional[str] = None
  doc: str = ''


METHODS: dict[str, Method] = {
  'gps': Method(GPS_RULES, 'supcon', doc='per-neuron top-K inputs by summed SupCon gradient'),
  'random': Method(GPS_RULES, 'random', doc='K random inputs per neuron (GPS budget)'),
  'magnitude': Method(GPS_RULES, 'magnitude', doc='per-neuron top-K inputs by |w|'),
  'full': Method(FULL_RULES, doc='every parameter'),
  'linear': Method(LINEAR_RULES, doc='the head only (linear probe)'),
  'bitfit': Method(BITFIT_RULES, doc='biases and the head'),
}


def get(name: str) -> Method:
  """The registered method `name`; a ValueError listing the known ones otherwise."""
  if name not in METHODS:
    raise ValueError(f'config.method={name!r}: use one of {", ".join(METHODS)}')
  return METHODS[name]


def rules(config: ml_collections.ConfigDict) -> Rules:
  """The role rules of a run: ``config.rules`` if given, else those of ``config.method``."""
  method = get(config.method)
  if config.rules:
    return tuple(tuple(r) for r in config.rules)
  return method.rules


def score_source(config: ml_collections.ConfigDict) -> Optional[str]:
  """What ranks the `select` entries: ``config.gps.score`` if given, else the method's."""
  return config.gps.score or get(config.method).score
