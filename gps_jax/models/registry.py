"""The one table of backbone families: everything gps_jax knows per family, in one place.

``config.model.name`` picks a :class:`Family`; building a model, loading a checkpoint,
the paper backbones and the conversion tool all look the family up here, so a new family
is one new entry (its config and build functions, its variants and its timm layout), not
a new branch in each of them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import ml_collections

from gps_jax.models.convnext import CONVNEXT_VARIANTS, build_convnext, convnext_config
from gps_jax.models.convnext_timm import CONVNEXT_TIMM
from gps_jax.models.fitting import Layout
from gps_jax.models.sam import METHOD_RULES as SAM_METHOD_RULES
from gps_jax.models.sam import METHOD_SCORES as SAM_METHOD_SCORES
from gps_jax.models.sam import VARIANTS as SAM_VARIANTS
from gps_jax.models.sam import build_sam, sam_config
from gps_jax.models.sam_hf import SAM_HF_LAYOUT
from gps_jax.models.sam_torch import SAM_LAYOUT
from gps_jax.models.swin import SWIN_VARIANTS, build_swin, swin_config
from gps_jax.models.swin_timm import SWIN_TIMM
from gps_jax.models.vit import VIT_VARIANTS, build_vit, vit_config
from gps_jax.models.vit_timm import VIT_TIMM


@dataclasses.dataclass(frozen=True)
class Family:
  """A backbone family.

  ``config(variant, num_classes=, image_size=, **overrides)`` makes a model config,
  ``build(model_config)`` the Flax module, ``variants`` maps a variant name to its
  architecture fields, and ``timm`` is the :class:`~gps_jax.models.fitting.Layout` of its
  PyTorch state dicts (timm's; the official checkpoints for SAM): names, array transform,
  resize hooks. ``task`` is what the model's output is ('classification': logits per
  class; 'segmentation': mask logits, `gps_jax.tasks`); ``rules`` and ``scores`` give, by
  method name, the role rules and score source a method uses on this family instead of
  its own (SAM has no classifier head: its mask decoder takes that part). ``layouts`` are
  other layouts of the same PyTorch file types (SAM: the ``transformers`` port), each
  recognised by its ``detect``; `file_layout` picks one.
  """

  name: str
  config: Callable[..., ml_collections.ConfigDict]
  build: Callable[[Any], nn.Module]
  variants: Mapping[str, Mapping[str, Any]]
  timm: Layout
  task: str = 'classification'
  rules: Mapping[str, tuple] = dataclasses.field(default_factory=dict)
  scores: Mapping[str, str] = dataclasses.field(default_factory=dict)
  layouts: tuple[Layout, ...] = ()

  def file_layout(self, arrays: Mapping[str, Any]) -> Layout:
    """The layout of a PyTorch state dict of this family: the first of ``layouts`` that
    detects it, else ``timm``."""
    return next((lay for lay in self.layouts if lay.detect(arrays)), self.timm)

  @property
  def npz(self) -> Layout:
    """The layout of a gps_jax / vit_jax ``.npz`` (Flax paths) of this family: no renaming,
    the same adaptations (resizes, optional modules) as a timm file."""
    return Layout(optional=self.timm.optional, resize=self.timm.resize)


FAMILIES: dict[str, Family] = {
  f.name: f
  for f in (
    Family('vit', vit_config, build_vit, VIT_VARIANTS, VIT_TIMM),
    Family('swin', swin_config, build_swin, SWIN_VARIANTS, SWIN_TIMM),
    Family('convnext', convnext_config, build_convnext, CONVNEXT_VARIANTS, CONVNEXT_TIMM),
    Family(
      'sam', sam_config, build_sam, SAM_VARIANTS, SAM_LAYOUT, task='segmentation',
      rules=SAM_METHOD_RULES, scores=SAM_METHOD_SCORES, layouts=(SAM_HF_LAYOUT,),
    ),  # fmt: skip
  )
}


def family(name: str) -> Family:
  """The family called ``name``; any other name is a ValueError listing the known ones."""
  if name not in FAMILIES:
    raise ValueError(f'config.model.name={name!r}: use one of {", ".join(FAMILIES)}')
  return FAMILIES[name]


def family_of(model_config) -> Family:
  """The family of a model config (ConfigDict or mapping); without a name, 'vit' (the
  configs written before other families existed have none)."""
  name = model_config.get('name', 'vit') if hasattr(model_config, 'get') else 'vit'
  return family(name)


def build_model(model_config) -> nn.Module:
  """The Flax module a model config describes, built by its family."""
  return family_of(model_config).build(model_config)
