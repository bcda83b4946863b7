"""The model tools/benchmark.py measures: a method's backbone with random weights, GPS's
random selection and the project's trainer on them. Nothing is downloaded or compiled here.
"""

from __future__ import annotations

import dataclasses

import jax
import ml_collections
import numpy as np

from gps_jax import backbone as backbone_lib
from gps_jax import experiment
from gps_jax import methods
from gps_jax import roles as roles_lib
from gps_jax import scoring
from gps_jax import selection
from gps_jax import trainer as trainer_lib
from gps_jax import weights
from gps_jax.models import fitting


def _random_leaf(path: str, shape: tuple, rng: np.random.Generator) -> np.ndarray:
  if path.endswith('scale'):
    return np.ones(shape, np.float32)
  if path.endswith('bias'):
    return np.zeros(shape, np.float32)
  return (0.02 * rng.standard_normal(shape, np.float32)).astype(np.float32)


def random_params(model, cache: dict) -> dict[str, np.ndarray]:
  """Flat float32 weights from `jax.eval_shape` (nothing compiled): kernels, embeddings and
  prompts ~ N(0, 0.02^2) as timm's init, norm scales 1, biases 0. A (path, shape) already
  drawn for another method's model is shared (`cache`)."""
  rng = np.random.default_rng(0)
  out = {}
  for path, shape in fitting.expected_shapes(model).items():
    if (path, shape) not in cache:
      cache[path, shape] = _random_leaf(path, shape, rng)
    out[path] = cache[path, shape]
  return out


def backbone(c: ml_collections.ConfigDict, classes: int, cache: dict) -> backbone_lib.Backbone:
  """As `gps_jax.backbone.setup_backbone` builds it (method fields included), with random weights
  on one device; a ValueError when the family lacks the method's layers."""
  model_cfg = backbone_lib.model_config_of(c, classes)
  model = weights.build_model(model_cfg)
  params = random_params(model, cache)
  rules = c.fan_in_rules or roles_lib.DEFAULT_FAN_IN_RULES
  roles = roles_lib.assign_roles(params, methods.rules(c), rules)
  return backbone_lib.Backbone(model, model_cfg, classes, params, roles, None, '', None)


def random_selection(c: ml_collections.ConfigDict, bb: backbone_lib.Backbone, cache: dict):
  """(indices, backbone with the roles after selection): K random inputs per neuron, drawn
  once per method of the registry (gps, gps_dense and gps_kentry share them)."""
  if not roles_lib.leaves_with_role(bb.roles, 'select'):
    return {}, bb
  key = ('selection', c.method)
  if key not in cache:
    scores = scoring.random_scores(bb.roles, jax.random.PRNGKey(1))
    cache[key] = selection.select(scores, c.gps.k, bb.roles, c.gps.level, c.gps.exclude)
  indices, roles = cache[key]
  return indices, dataclasses.replace(bb, roles=roles)


def make_tuner(c: ml_collections.ConfigDict, classes: int, cache: dict):
  """(the project's trainer for the run config `c`, its backbone after selection)."""
  bb = backbone(c, classes, cache)
  indices, bb = random_selection(c, bb, cache)
  tuner = trainer_lib.MaskedFinetuner(
    bb.model.apply, bb.roles, indices, c, num_classes=classes, total_steps=1000,
    update=experiment.update_rule(c, bb, indices),
  )  # fmt: skip
  return tuner, bb
