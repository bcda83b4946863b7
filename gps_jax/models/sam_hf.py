"""The Hugging Face ``transformers`` port of SAM (``SamModel``: ``facebook/sam-vit-base`` and
the other ``model.safetensors`` / ``pytorch_model.bin`` files) for
:class:`gps_jax.models.sam.SAM`.

The port holds the same arrays as the official ``sam_vit_*.pth`` under other names (its
conversion script renames, it does not transform), so this layout is the official one
(:data:`gps_jax.models.sam_torch.SAM_LAYOUT`: array transforms and position resizes) with
the names of ``transformers``: :func:`hf_key` maps an official key to the port's. Two
differences besides names:

* the prompt encoder's random-feature matrix is one tensor shared by two modules
  (``shared_image_embedding`` and ``prompt_encoder.shared_embedding``); a file may hold it
  under either name or both (then they must be equal);
* the point, box and mask-prompt parts (``point_embed``, ``not_a_point_embed``,
  ``mask_embed``) are not used by the no-prompt path and are left out, as in the official
  layout.

A file is recognised as the port's by its ``vision_encoder.`` keys
(:meth:`gps_jax.models.registry.Family.file_layout`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

from gps_jax.models.sam_torch import SAM_LAYOUT, torch_key

# Parts of the port's state dict the no-prompt path never uses.
UNUSED = re.compile(r'^prompt_encoder\.(point_embed|not_a_point_embed|mask_embed)\.')
PE = 'shared_image_embedding.positional_embedding'
PE_TIED = 'prompt_encoder.shared_embedding.positional_embedding'

# Official key -> the port's, applied in order (transformers' convert_sam_to_hf.py renames
# the other way). The 3-layer MLPs of the decoder name their layers proj_in, layers.0,
# proj_out.
_MLPS = r'(iou_prediction_head|output_hypernetworks_mlps\.\d+)'
_RENAMES = tuple(
  (re.compile(pattern), replacement)
  for pattern, replacement in (
    (r'^image_encoder\.blocks\.', 'vision_encoder.layers.'),
    (r'^image_encoder\.', 'vision_encoder.'),
    (r'\.patch_embed\.proj\.', '.patch_embed.projection.'),
    (r'\.neck\.0\.', '.neck.conv1.'),
    (r'\.neck\.1\.', '.neck.layer_norm1.'),
    (r'\.neck\.2\.', '.neck.conv2.'),
    (r'\.neck\.3\.', '.neck.layer_norm2.'),
    (r'\.norm(\d|_final_attn)\.', r'.layer_norm\1.'),
    (r'\.output_upscaling\.0\.', '.upscale_conv1.'),
    (r'\.output_upscaling\.1\.', '.upscale_layer_norm.'),
    (r'\.output_upscaling\.3\.', '.upscale_conv2.'),
    (rf'\.{_MLPS}\.layers\.0\.', r'.\1.proj_in.'),
    (rf'\.{_MLPS}\.layers\.1\.', r'.\1.layers.0.'),
    (rf'\.{_MLPS}\.layers\.2\.', r'.\1.proj_out.'),
    (r'^prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix$', PE),
    # The prompt parts the no-prompt path leaves out, for a complete mapping.
    (r'\.point_embeddings\.', '.point_embed.'),
    (r'\.mask_downscaling\.0\.', '.mask_embed.conv1.'),
    (r'\.mask_downscaling\.1\.', '.mask_embed.layer_norm1.'),
    (r'\.mask_downscaling\.3\.', '.mask_embed.conv2.'),
    (r'\.mask_downscaling\.4\.', '.mask_embed.layer_norm2.'),
    (r'\.mask_downscaling\.6\.', '.mask_embed.conv3.'),
  )
)


def hf_key(key: str) -> str:
  """The ``transformers`` SamModel key of an official ``segment_anything`` state-dict key."""
  for pattern, replacement in _RENAMES:
    key = pattern.sub(replacement, key)
  return key


def is_hf(arrays: Mapping) -> bool:
  """Whether a state dict is in the port's layout (its image encoder is ``vision_encoder``)."""
  return any(k.startswith('vision_encoder.') for k in arrays)


def _prepare(arrays: Mapping, model) -> dict:
  """The unused prompt parts dropped; the shared positional matrix under `PE` only."""
  del model
  out = {k: v for k, v in arrays.items() if not UNUSED.match(k)}
  if PE_TIED in out:
    tied = out.pop(PE_TIED)
    if PE not in out:
      out[PE] = tied
    elif out[PE].shape != tied.shape or (out[PE] != tied).any():
      raise ValueError(f'{PE} and {PE_TIED} differ; in SamModel they are one tensor')
  return out


SAM_HF_LAYOUT = dataclasses.replace(
  SAM_LAYOUT,
  file_name=lambda path: hf_key(torch_key(path)),
  prepare=_prepare,
  detect=is_hf,
  label='SAM checkpoint (transformers layout)',
)
