"""timm checkpoints of ConvNeXt: the names of a timm ``ConvNeXt`` state dict for the parameter
tree of :class:`gps_jax.models.convnext.ConvNeXt`. The strict fit itself is
:func:`gps_jax.models.fitting.fit_params`, shared by every family."""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from gps_jax.models.convnext import ConvNeXt
from gps_jax.models.timm_layout import TIMM_LEAVES, timm_layout

_TIMM_MODULES = (
  (r'^stem/conv$', 'stem.0'),
  (r'^stem/norm$', 'stem.1'),
  (r'^stages_(\d+)/downsample/norm$', r'stages.\1.downsample.0'),
  (r'^stages_(\d+)/downsample/conv$', r'stages.\1.downsample.1'),
  (r'^stages_(\d+)/blocks_(\d+)$', r'stages.\1.blocks.\2'),  # gamma
  (r'^stages_(\d+)/blocks_(\d+)/(conv_dw|norm)$', r'stages.\1.blocks.\2.\3'),
  (r'^stages_(\d+)/blocks_(\d+)/mlp/(fc1|fc2)$', r'stages.\1.blocks.\2.mlp.\3'),
  (r'^final_norm$', 'head.norm'),
  (r'^head$', 'head.fc'),
)
_TIMM_LEAVES = {**TIMM_LEAVES, 'gamma': 'gamma'}


def _timm_name(path: str) -> str:
  """'stages_1/blocks_0/mlp/fc1/kernel' -> 'stages.1.blocks.0.mlp.fc1.weight'."""
  module, _, leaf = path.rpartition('/')
  for pattern, repl in _TIMM_MODULES:
    if re.match(pattern, module):
      return re.sub(pattern, repl, module) + '.' + _TIMM_LEAVES[leaf]
  raise AssertionError(f'no timm name for ConvNeXt parameter {path!r}')  # a bug here


# A timm ConvNeXt state dict: the classifier is head.fc (head.norm is the final norm, which
# is not dropped with a classifier that does not fit).
CONVNEXT_TIMM = timm_layout(_timm_name, label='timm ConvNeXt state dict', head_prefix='head.fc.')


def convnext_params_from_timm(
  state_dict: Mapping[str, np.ndarray], model: ConvNeXt, *, source: str = '', init=None
) -> dict:
  """Converts a timm ConvNeXt state dict into the nested Flax params of ``model``.

  ``state_dict`` maps timm 1.0 names (``stem.0.weight``, ``stages.{i}.downsample.{0,1}.*``,
  ``stages.{i}.blocks.{j}.{conv_dw,norm,mlp.fc1,mlp.fc2}.*``, ``...gamma``, ``head.norm.*``,
  ``head.fc.*``; the names timm has used since it added ConvNeXt) to numpy arrays, e.g.
  from ``safetensors.numpy.load_file`` or ``{k: v.numpy() for k, v in sd.items()}``. Convs go
  from OIHW to HWIO, Linear weights are transposed; the result is float32 ``np.ndarray``s.

  The classifier ``head.fc.*`` is the one exception to strict loading: when the model has
  num_classes == 0, or the checkpoint's head does not fit the model (another class count,
  or only one of weight/bias), or the checkpoint has no head, the checkpoint's head is
  dropped and the model gets its fresh head (its own init, `model.head_init`: zeros by
  default; taken from ``init`` when given) -- a new task gets a new head. Everything else
  must match exactly: every missing, unexpected, mis-shaped or non-float key is named in
  one ValueError (``source`` names the file).

  The expected names and shapes come from ``jax.eval_shape`` of ``model.init`` (nothing is
  computed) or from ``init``. Checkpoints of the original facebookresearch/ConvNeXt
  repository (``downsample_layers.*``, ``dwconv``, ``pwconv1``) must first go through
  timm's ``checkpoint_filter_fn``.
  """
  return CONVNEXT_TIMM.params(state_dict, model, source, init=init)
