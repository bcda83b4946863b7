"""The official SAM checkpoints (``sam_vit_b_01ec64.pth`` and the ViT-L / ViT-H files) for
:class:`gps_jax.models.sam.SAM`: the names of the ``segment_anything`` state dict, the
layout changes (torch's (out, in) Linear and (out, in, kh, kw) conv weights to Flax's
kernels), and the resizes a different input size needs.

* The absolute position embedding (1, 64, 64, C at 1024 px) is resized bilinearly, as
  ``F.interpolate(..., mode='bilinear', align_corners=False)`` does (the common practice of
  SAM fine-tuning at other sizes).
* The relative position tables are resized linearly along their rows, exactly as SAM's own
  ``get_rel_pos`` does on the fly when a table does not fit the grid.
* The prompt encoder's point, box and mask-prompt parts are not used by the no-prompt path
  and are left out (`UNUSED`); every other entry must be used, and every parameter of the
  model must be given (a `UserError` lists what is missing or left over).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from gps_jax import tree as tree_lib
from gps_jax.errors import UserError
from gps_jax.models.fitting import Layout

# Parts of the official state dict the no-prompt path never uses.
UNUSED = re.compile(r'^prompt_encoder\.(point_embeddings|not_a_point_embed|mask_downscaling)\.')
# Module lists of the PyTorch tree: `blocks.3.` -> `blocks_3/`.
_LISTS = re.compile(
  r'\b(blocks|layers|neck|output_upscaling|output_hypernetworks_mlps)\.(\d+)\.'
)
# The same lists in Flax paths: `blocks_3` -> `blocks.3`.
_FLAX_LISTS = re.compile(r'\b(blocks|layers|neck|output_upscaling|output_hypernetworks_mlps)_(\d+)\b')
_NORMS = re.compile(r'(^|/)(norm\d*|norm_final_attn|neck_[13]|output_upscaling_1)$')
# Parameters stored as they are (no '/weight' leaf name in the Flax tree).
_PLAIN = {
  'prompt_encoder.no_mask_embed.weight': 'prompt_encoder/no_mask_embed',
  'mask_decoder.iou_token.weight': 'mask_decoder/iou_token',
  'mask_decoder.mask_tokens.weight': 'mask_decoder/mask_tokens',
}


def flax_path(key: str) -> str:
  """The Flax parameter path of an official state-dict key."""
  if key in _PLAIN:
    return _PLAIN[key]
  module, _, leaf = _LISTS.sub(r'\1_\2.', key).rpartition('.')
  module = module.replace('.', '/')
  if leaf == 'weight':
    leaf = 'scale' if _NORMS.search(module) else 'kernel'
  return f'{module}/{leaf}'


def _convert(path: str, value: np.ndarray) -> np.ndarray:
  """torch layout -> Flax layout of one leaf."""
  if not path.endswith('/kernel'):
    return value
  if value.ndim == 2:  # Linear (out, in)
    return value.T
  if 'output_upscaling' in path:  # ConvTranspose2d (in, out, kh, kw) -> (kh, kw, in, out)
    return value.transpose(2, 3, 0, 1)
  return value.transpose(2, 3, 1, 0)  # Conv2d (out, in, kh, kw) -> (kh, kw, in, out)


def _linear_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) weights of torch's linear resize with half-pixel centres and no
  antialiasing (``align_corners=False``): source position (i + 0.5) n_in / n_out - 0.5,
  clamped at 0, between its two neighbours; in float32, as torch computes it on CPU."""
  f32 = np.float32
  scale = f32(n_in) / f32(n_out)
  src = np.maximum(scale * (np.arange(n_out, dtype=f32) + f32(0.5)) - f32(0.5), f32(0.0))
  lo = np.minimum(np.floor(src).astype(int), n_in - 1)
  hi = np.minimum(lo + 1, n_in - 1)
  frac = src - lo
  m = np.zeros((n_out, n_in))
  np.add.at(m, (np.arange(n_out), lo), 1.0 - frac)
  np.add.at(m, (np.arange(n_out), hi), frac)
  return m


def resize_rel_pos(table: np.ndarray, rows: int) -> np.ndarray:
  """A (L, C) relative position table resized to `rows` rows by linear interpolation
  (``F.interpolate(mode='linear', align_corners=False)``, as SAM's ``get_rel_pos``)."""
  table = np.asarray(table, np.float32)
  if table.shape[0] == rows:
    return table
  return (_linear_matrix(table.shape[0], rows) @ table).astype(np.float32)


def resize_pos_embed(pos: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
  """A (1, H, W, C) position embedding resized to `grid` bilinearly
  (``F.interpolate(mode='bilinear', align_corners=False)``)."""
  pos = np.asarray(pos, np.float32)
  if pos.shape[1:3] == tuple(grid):
    return pos
  my, mx = _linear_matrix(pos.shape[1], grid[0]), _linear_matrix(pos.shape[2], grid[1])
  return np.einsum('yh,bhwc,xw->byxc', my, pos, mx).astype(np.float32)


def torch_key(path: str) -> str:
  """The official state-dict key of a Flax parameter path (the inverse of `flax_path`)."""
  plain = {v: k for k, v in _PLAIN.items()}
  if path in plain:
    return plain[path]
  module, _, leaf = path.rpartition('/')
  module = _FLAX_LISTS.sub(r'\1.\2', module).replace('/', '.')
  return f'{module}.{"weight" if leaf in ("kernel", "scale") else leaf}'


def _torch_shape(path: str, shape: tuple) -> tuple:
  """The shape the official file gives the Flax leaf `path` of `shape` (`_convert` undone)."""
  if not path.endswith('/kernel'):
    return tuple(shape)
  if len(shape) == 2:
    return tuple(shape[::-1])
  kh, kw, cin, cout = shape
  return (cin, cout, kh, kw) if 'output_upscaling' in path else (cout, cin, kh, kw)


def _resize_position(path: str, value: np.ndarray, want: tuple):
  if path.endswith('/pos_embed'):
    return resize_pos_embed(value, want[1:3])
  if re.search(r'/rel_pos_[hw]$', path):
    return resize_rel_pos(value, want[0])
  return None


def _drop_unused(state: Mapping[str, np.ndarray], model) -> dict:
  del model
  return {k: v for k, v in state.items() if not UNUSED.match(k)}


# The official state dict as a gps_jax.models.fitting.Layout: `load_checkpoint` reads a
# sam_vit_*.pth through the one strict fit (adapters added to the encoder keep their init).
SAM_LAYOUT = Layout(
  file_name=torch_key,
  file_shape=_torch_shape,
  to_flax=_convert,
  resize=(_resize_position,),
  prepare=_drop_unused,
  label='SAM checkpoint',
)


def sam_params_from_torch(
  state: Mapping[str, np.ndarray], model, source: str = 'the checkpoint'
) -> dict[str, np.ndarray]:
  """Flat float32 parameters of `model` from an official SAM state dict (NumPy arrays), through
  `SAM_LAYOUT`: position terms resized to the model's input size; a `UserError` naming
  `source` and every entry missing, left over or of another shape."""
  arrays = {k: np.asarray(v, np.float32) for k, v in state.items()}
  try:
    params = SAM_LAYOUT.params(arrays, model, source)
  except ValueError as e:
    raise UserError(' '.join(str(e).split())) from None
  return tree_lib.flat(params)


def load_sam_pth(path: str, model) -> dict[str, np.ndarray]:
  """`sam_params_from_torch` of a ``.pth`` file read with ``torch.load(weights_only=True)``
  (tensors only: nothing in the file is executed)."""
  from gps_jax.weights import read_state_dict

  try:
    state = read_state_dict(path)
  except (OSError, ValueError) as e:  # missing, a pickle with code, truncated, not a dict
    raise UserError(str(e)) from None
  return sam_params_from_torch(state, model, source=path)
