"""ConvNeXt (Liu et al. 2022) in Flax Linen, equal to ``timm.models.convnext.ConvNeXt``.

Only timm's standard configuration is implemented, the one of ``convnext_{tiny,small,base,
large}`` and their ``.fb_in22k`` / ``.fb_in1k`` checkpoints: patch-4 stem, conv_mlp=False,
7x7 depthwise convolutions, LayerNorm (eps 1e-6) everywhere, layer scale, pool -> norm ->
classifier head. Every submodule carries an explicit ``name=`` so the parameter tree is::

    stem/conv/{kernel (4,4,3,C0), bias}             stem/norm/{scale,bias}
    stages_{i}/downsample/norm/{scale,bias}          (i >= 1)
    stages_{i}/downsample/conv/{kernel (2,2,Ci-1,Ci), bias}
    stages_{i}/blocks_{j}/conv_dw/{kernel (7,7,1,Ci), bias}   (depthwise)
    stages_{i}/blocks_{j}/norm/{scale,bias}
    stages_{i}/blocks_{j}/mlp/fc1/{kernel (Ci,4Ci), bias}
    stages_{i}/blocks_{j}/mlp/fc2/{kernel (4Ci,Ci), bias}
    stages_{i}/blocks_{j}/gamma (Ci,)                 (layer scale; absent if layer_scale_init is None)
    final_norm/{scale,bias}                           (timm's head.norm)
    head/{kernel (C3,num_classes), bias}              (only when num_classes > 0)

The final norm lives outside ``head/`` on purpose: GPS freezes norms and trains the head.

:func:`convnext_params_from_timm` converts a timm state dict (numpy arrays, e.g. read with
``safetensors.numpy.load_file``) into this tree.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gps_jax.models.model_config import module_fields, named_config, task_head
from gps_jax.models.vit import _drop_path
from gps_jax.tree import flat, unflat

log = logging.getLogger(__name__)

LN_EPSILON = 1e-6  # timm's LayerNorm / LayerNorm2d default, used by every ConvNeXt norm.

# Depths and widths of timm's convnext_{tiny,small,base,large}.
CONVNEXT_VARIANTS = {
  'T': dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768)),
  'S': dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768)),
  'B': dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024)),
  'L': dict(depths=(3, 3, 27, 3), dims=(192, 384, 768, 1536)),
}

# timm's IMAGENET_DEFAULT_MEAN / _STD, the normalisation of the fb_in1k / fb_in22k weights.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_weight_init = nn.initializers.truncated_normal(stddev=0.02)  # timm: trunc_normal_(std=.02)


def _layer_norm(dtype, name):
  # use_fast_variance=False: E[(x - mean)^2] as torch does; E[x^2] - mean^2 loses precision
  # on the residual stream, whose channel mean can be large against its spread.
  return nn.LayerNorm(epsilon=LN_EPSILON, use_fast_variance=False, dtype=dtype, name=name)


def convnext_drop_path_rates(drop_path_rate: float, depths) -> list[list[float]]:
  """Per-stage lists of per-block drop-path rates: linear from 0 to drop_path_rate over all
  blocks of the network, as timm's ``calculate_drop_path_rates(rate, depths, stagewise=True)``
  (``torch.linspace(0, rate, sum(depths)).split(depths)``)."""
  total = sum(depths)
  rates = [drop_path_rate * k / max(total - 1, 1) for k in range(total)]
  out, start = [], 0
  for d in depths:
    out.append(rates[start : start + d])
    start += d
  return out


class Mlp(nn.Module):
  """fc1 (C -> hidden) -> exact GELU -> fc2 (hidden -> C), on channels-last inputs."""

  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    y = nn.Dense(self.hidden, dtype=self.dtype, kernel_init=_weight_init, name='fc1')(x)
    y = nn.gelu(y, approximate=False)  # torch nn.GELU() is the erf form
    return nn.Dense(x.shape[-1], dtype=self.dtype, kernel_init=_weight_init, name='fc2')(y)


class ConvNeXtBlock(nn.Module):
  """x + DropPath(gamma * fc2(GELU(fc1(LN(dwconv7x7(x)))))), on NHWC inputs."""

  mlp_ratio: int = 4
  layer_scale_init: Optional[float] = 1e-6
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, deterministic: bool):
    c = x.shape[-1]
    y = nn.Conv(
      c,
      (7, 7),
      padding=((3, 3), (3, 3)),
      feature_group_count=c,
      dtype=self.dtype,
      kernel_init=_weight_init,
      name='conv_dw',
    )(x)
    y = _layer_norm(self.dtype, 'norm')(y)
    y = Mlp(self.mlp_ratio * c, self.dtype, name='mlp')(y)
    if self.layer_scale_init is not None:
      gamma = self.param('gamma', nn.initializers.constant(self.layer_scale_init), (c,))
      y = y * gamma.astype(y.dtype)
    return x + _drop_path(self, y, self.drop_path_rate, deterministic)


class Stem(nn.Module):
  """Patchify: a patch_size x patch_size conv with stride patch_size, then LayerNorm."""

  dim: int
  patch_size: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    p = self.patch_size
    x = nn.Conv(
      self.dim,
      (p, p),
      strides=(p, p),
      padding='VALID',
      dtype=self.dtype,
      kernel_init=_weight_init,
      name='conv',
    )(x)
    return _layer_norm(self.dtype, 'norm')(x)


class Downsample(nn.Module):
  """LayerNorm, then a 2x2 conv with stride 2 to ``dim`` channels."""

  dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = _layer_norm(self.dtype, 'norm')(x)
    return nn.Conv(
      self.dim,
      (2, 2),
      strides=(2, 2),
      padding='VALID',
      dtype=self.dtype,
      kernel_init=_weight_init,
      name='conv',
    )(x)


class ConvNeXtStage(nn.Module):
  """Optional Downsample (every stage but the first), then the blocks."""

  dim: int
  drop_path_rates: tuple[float, ...]
  downsample: bool
  layer_scale_init: Optional[float] = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, deterministic: bool):
    if self.downsample:
      x = Downsample(self.dim, self.dtype, name='downsample')(x)
    for j, rate in enumerate(self.drop_path_rates):
      x = ConvNeXtBlock(
        layer_scale_init=self.layer_scale_init,
        drop_path_rate=rate,
        dtype=self.dtype,
        name=f'blocks_{j}',
      )(x, deterministic=deterministic)
    return x


class ConvNeXt(nn.Module):
  """ConvNeXt with global average pooling, as timm's ``ConvNeXt`` (default arguments).

  ``__call__(images, train=...)`` takes NHWC float images of size image_size x image_size
  and returns ``(logits, features)``: features is the spatial mean of the last stage after
  ``final_norm`` (timm's ``forward_head(x, pre_logits=True)``), logits = head(features), or
  None when num_classes == 0. Drop-path (rate linear from 0 to drop_path_rate over all
  blocks, as timm) draws from the 'dropout' rng when ``train`` is true.
  """

  num_classes: int
  depths: tuple[int, ...]
  dims: tuple[int, ...]
  image_size: int
  drop_path_rate: float = 0.0
  layer_scale_init: Optional[float] = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, *, train: bool):
    if len(self.depths) != len(self.dims) or not self.depths:
      raise ValueError(
        f'ConvNeXt needs as many depths as dims, got depths={self.depths} dims={self.dims}'
      )
    if images.ndim != 4 or images.shape[1:] != (self.image_size, self.image_size, 3):
      raise ValueError(
        f'ConvNeXt expects NHWC images of shape (B, {self.image_size}, '
        f'{self.image_size}, 3), got {images.shape}'
      )
    min_size = 4 * 2 ** (len(self.dims) - 1)
    if self.image_size < min_size:
      raise ValueError(f'ConvNeXt needs image_size >= {min_size}, got {self.image_size}')
    x = Stem(self.dims[0], dtype=self.dtype, name='stem')(jnp.asarray(images, self.dtype))
    rates = convnext_drop_path_rates(self.drop_path_rate, self.depths)
    for i, dim in enumerate(self.dims):
      x = ConvNeXtStage(
        dim,
        tuple(rates[i]),
        downsample=i > 0,
        layer_scale_init=self.layer_scale_init,
        dtype=self.dtype,
        name=f'stages_{i}',
      )(x, deterministic=not train)
    x = jnp.mean(x, axis=(1, 2))
    features = _layer_norm(self.dtype, 'final_norm')(x)
    return task_head(features, self.num_classes, self.dtype), features


_CONVNEXT_FIELDS = (
  'num_classes',
  'depths',
  'dims',
  'image_size',
  'drop_path_rate',
  'layer_scale_init',
  'dtype',
)


def _variant_fields(variant: str) -> dict:
  if variant not in CONVNEXT_VARIANTS:
    raise ValueError(
      f'unknown ConvNeXt variant {variant!r}: expected one of {sorted(CONVNEXT_VARIANTS)}'
    )
  return dict(CONVNEXT_VARIANTS[variant])


def convnext_config(
  variant: str, *, num_classes: int, image_size: int, **overrides
) -> ml_collections.ConfigDict:
  """Returns the model config of a named variant ('T', 'S', 'B', 'L'): name='convnext',
  variant, every ConvNeXt field and the ImageNet mean/std of timm's checkpoints;
  ``overrides`` replace any of them (an unknown key is an error)."""
  defaults = dict(
    drop_path_rate=0.0, layer_scale_init=1e-6, dtype='float32', mean=IMAGENET_MEAN, std=IMAGENET_STD
  )
  return named_config(
    'convnext', variant, _variant_fields, defaults, overrides, label='ConvNeXt',
    num_classes=num_classes, image_size=image_size,
  )  # fmt: skip


def build_convnext(model_config) -> ConvNeXt:
  """Builds a ConvNeXt from a model config (ConfigDict or mapping). Architecture fields come
  from ``variant`` when given; explicit non-None fields take precedence over the variant
  (``layer_scale_init`` None means the variant default 1e-6, as for every None field). Keys
  that are not ConvNeXt fields (name, variant, mean, std, anything else) are ignored."""
  fields = module_fields(
    model_config, 'convnext', _CONVNEXT_FIELDS, _CONVNEXT_FIELDS[:4], _variant_fields,
    label='ConvNeXt', int_tuples=('depths', 'dims'),
  )  # fmt: skip
  return ConvNeXt(**fields)


# --- timm checkpoints ---------------------------------------------------------------------

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
_TIMM_LEAVES = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias', 'gamma': 'gamma'}
_TIMM_HEAD = ('head.fc.weight', 'head.fc.bias')


def _timm_name(path: str) -> str:
  """'stages_1/blocks_0/mlp/fc1/kernel' -> 'stages.1.blocks.0.mlp.fc1.weight'."""
  module, _, leaf = path.rpartition('/')
  for pattern, repl in _TIMM_MODULES:
    if re.match(pattern, module):
      return re.sub(pattern, repl, module) + '.' + _TIMM_LEAVES[leaf]
  raise AssertionError(f'no timm name for ConvNeXt parameter {path!r}')  # a bug here


def _timm_shape(shape: tuple) -> tuple:
  """The timm (torch) shape of a Flax leaf: HWIO conv -> OIHW, (in, out) Linear -> (out, in)."""
  if len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  if len(shape) == 2:
    return shape[::-1]
  return shape


def _from_timm(array: np.ndarray) -> np.ndarray:
  array = np.asarray(array, dtype=np.float32)
  if array.ndim == 4:
    return np.ascontiguousarray(array.transpose(2, 3, 1, 0))
  if array.ndim == 2:
    return np.ascontiguousarray(array.T)
  return array


def convnext_params_from_timm(state_dict: Mapping[str, np.ndarray], model: ConvNeXt) -> dict:
  """Converts a timm ConvNeXt state dict into the nested Flax params of ``model``.

  ``state_dict`` maps timm 1.0 names (``stem.0.weight``, ``stages.{i}.downsample.{0,1}.*``,
  ``stages.{i}.blocks.{j}.{conv_dw,norm,mlp.fc1,mlp.fc2}.*``, ``...gamma``, ``head.norm.*``,
  ``head.fc.*``; the names timm has used since it added ConvNeXt) to numpy arrays, e.g.
  from ``safetensors.numpy.load_file`` or ``{k: v.numpy() for k, v in sd.items()}``. Convs go
  from OIHW to HWIO, Linear weights are transposed; the result is float32 ``np.ndarray``s.

  The classifier ``head.fc.*`` is the one exception to strict loading: when the model has
  num_classes == 0, or the checkpoint's head does not fit the model (another class count,
  or only one of weight/bias), or the checkpoint has no head, the checkpoint's head is
  dropped and the model gets a fresh zero head (zero kernel and bias, the model's own
  init) -- a new task gets a new head. Everything else must match exactly: every missing,
  unexpected, mis-shaped or non-float key is named in one ValueError.

  The expected names and shapes come from ``jax.eval_shape`` of ``model.init`` (nothing is
  computed). Checkpoints of the original facebookresearch/ConvNeXt repository
  (``downsample_layers.*``, ``dwconv``, ``pwconv1``) must first go through timm's
  ``checkpoint_filter_fn``.
  """
  dummy = jax.ShapeDtypeStruct((1, model.image_size, model.image_size, 3), jnp.float32)
  shapes = jax.eval_shape(
    lambda x: model.init(jax.random.PRNGKey(0), x, train=False)['params'], dummy
  )
  expected = {k: tuple(v.shape) for k, v in flat(shapes).items()}
  names = {k: _timm_name(k) for k in expected}
  model_head = {k for k in expected if k.startswith('head/')}
  loaded = dict(state_dict)

  file_head = {k for k in _TIMM_HEAD if k in loaded}
  head_fits = bool(model_head) and all(
    names[k] in loaded and tuple(np.shape(loaded[names[k]])) == _timm_shape(expected[k])
    for k in model_head
  )
  if file_head and not head_fits:
    log.info(
      'dropping the checkpoint head %s; the model head %s keeps its fresh zero init',
      {k: tuple(np.shape(loaded[k])) for k in sorted(file_head)},
      {k: expected[k] for k in sorted(model_head)},
    )
    for k in file_head:
      del loaded[k]

  problems, out = [], {}
  for path in sorted(expected, key=lambda p: names[p]):
    name, want = names[path], _timm_shape(expected[path])
    if name not in loaded:
      if path in model_head:
        out[path] = np.zeros(expected[path], np.float32)  # the model's head init: zeros
      else:
        problems.append(f'missing {name} {want} (for {path})')
      continue
    value = loaded[name]
    got = tuple(np.shape(value))
    if got != want:
      problems.append(f'wrong shape {name}: checkpoint {got}, model needs {want} (for {path})')
    elif np.asarray(value).dtype.kind != 'f':
      problems.append(f'non-float dtype {name} {np.asarray(value).dtype}')
    else:
      out[path] = _from_timm(value)
  used = set(names.values())
  problems += [f'unexpected {k} {tuple(np.shape(loaded[k]))}' for k in sorted(set(loaded) - used)]
  if problems:
    raise ValueError(
      f'timm ConvNeXt state dict does not fit the model ({len(problems)} problems):\n  '
      + '\n  '.join(problems)
    )
  return unflat(out)
