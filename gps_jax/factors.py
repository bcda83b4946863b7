"""Reparameterisations by a few new arrays ("factors") that merge into the frozen base.

Two methods of the paper's comparison are functions of the frozen base plus a few
trainable arrays, like GPS's sparse delta, and merge into it for inference:

* LoRA (Hu et al. 2022): a target kernel W, viewed as (fan_in, fan_out), becomes
  ``W + (alpha / rank) * A @ B`` with A (fan_in, rank) Gaussian and B (rank, n) zero, so
  training starts from the base. A fused qkv kernel (Swin) gets its q and v thirds only
  (``columns``), as separate query and value kernels do in ViT.
* SSF (Lian et al. 2022): the output y of a linear, conv or norm layer becomes
  ``scale * y + shift`` per output channel. Since y = x W + b (or norm(x) * g + b), this is
  the layer with ``W * scale`` and ``b * scale + shift``: the merged form is exact, and it
  is what the forward pass uses. scale starts at N(1, 0.02), shift at N(0, 0.02) (SSF's).

A *spec* (plain JSON data, kept in the delta's manifest) says what the factors apply to;
:func:`merge` is the one function that applies them, in the trainer's forward pass and in
``python -m gps_jax.delta apply``. Factor names are '<leaf or module path>/<suffix>'.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gps_jax import tree as tree_lib
from gps_jax.errors import UserError

LORA_A, LORA_B = 'lora_a', 'lora_b'
SSF_SCALE, SSF_SHIFT = 'ssf_scale', 'ssf_shift'
SUFFIXES = (LORA_A, LORA_B, SSF_SCALE, SSF_SHIFT)

# The query and value kernels of each family (config.lora.targets = () picks these).
# ConvNeXt has no attention: its LoRA goes to the pointwise MLP convs (fc1, fc2).
LORA_TARGETS = {
  'vit': (r'(^|/)(query|value)/kernel$',),
  'swin': (r'(^|/)attn/qkv/kernel$',),
  'convnext': (r'(^|/)mlp/fc[12]/kernel$',),
  'sam': (r'^image_encoder/blocks_\d+/attn/qkv/kernel$',),
}
# SSF after every linear, conv and norm of the backbone (config.ssf.targets = ()); for SAM
# those of the image encoder (its mask decoder trains in full).
SSF_TARGETS = (r'.*',)
SSF_FAMILY_TARGETS = {'sam': (r'^image_encoder/',)}
_FUSED_QKV = re.compile(r'(^|/)qkv/kernel$')


def _compile(patterns: Iterable[str], key: str) -> list[re.Pattern]:
  out = []
  for p in patterns:
    try:
      out.append(re.compile(p))
    except re.error as e:
      raise UserError(f'{key}: bad regex {p!r}: {e}') from None
  return out


def _fan_in_ndim(path: str, shape: tuple, fan_in_rules) -> int:
  for pattern, n in fan_in_rules:
    if re.search(pattern, path):
      n = int(n)
      return n + len(shape) if n < 0 else n
  return len(shape) - 1


# ----------------------------------------------------------------------------- LoRA


def lora_spec(
  shapes: Mapping[str, tuple],
  roles: Mapping[str, str],
  *,
  family: str,
  targets: Iterable[str],
  rank: int,
  alpha: float,
  fan_in_rules,
) -> dict:
  """The LoRA spec of a model: its target kernels, their fan-in axes and q/v columns.

  `shapes` and `roles` are flat {path: shape} and {path: role}; targets are regexes on
  kernel paths (empty: LORA_TARGETS of `family`). A target must be a frozen kernel.
  """
  if int(rank) != rank or rank < 1:
    raise UserError(f'config.lora.rank={rank!r}: use a positive integer')
  targets = tuple(targets) or LORA_TARGETS.get(family, ())
  if not targets:
    raise UserError(
      f'config.lora.targets is empty and model family {family!r} has no default; '
      'give regexes on kernel paths'
    )
  compiled = _compile(targets, 'config.lora.targets')
  spec = {'rule': 'lora', 'rank': int(rank), 'scaling': float(alpha) / int(rank)}
  spec['fan_in_ndim'], spec['columns'] = {}, {}
  for path, shape in shapes.items():
    if not path.endswith('kernel') or not any(c.search(path) for c in compiled):
      continue
    if roles[path] != 'freeze':
      raise UserError(f'config.lora.targets matches {path!r}, whose role is {roles[path]}')
    n = _fan_in_ndim(path, shape, fan_in_rules)
    spec['fan_in_ndim'][path] = n
    fan_out = math.prod(shape[n:])
    if _FUSED_QKV.search(path) and fan_out % 3 == 0:
      third = fan_out // 3  # [q | k | v]: LoRA on q and v, as on ViT's separate kernels
      spec['columns'][path] = list(range(third)) + list(range(2 * third, fan_out))
  if not spec['fan_in_ndim']:
    raise UserError(f'config.lora.targets {list(targets)} match no kernel of the model')
  return spec


def _lora_shapes(spec: Mapping, shapes: Mapping[str, tuple]) -> dict[str, tuple]:
  out = {}
  for path, n in spec['fan_in_ndim'].items():
    shape = tuple(shapes[path])
    cols = spec['columns'].get(path)
    width = len(cols) if cols is not None else math.prod(shape[n:])
    out[f'{path}/{LORA_A}'] = (math.prod(shape[:n]), spec['rank'])
    out[f'{path}/{LORA_B}'] = (spec['rank'], width)
  return out


def _lora_init(spec: Mapping, shapes: Mapping[str, tuple], rng: jax.Array) -> dict:
  """A ~ N(0, 1 / (3 fan_in)) (the variance of loralib's kaiming-uniform A, but Gaussian,
  as the LoRA paper says), B = 0: the merged kernel starts at the base."""
  out = {}
  for i, (name, shape) in enumerate(sorted(_lora_shapes(spec, shapes).items())):
    if name.endswith(LORA_A):
      std = 1.0 / math.sqrt(3.0 * shape[0])
      out[name] = std * jax.random.normal(jax.random.fold_in(rng, i), shape, jnp.float32)
    else:
      out[name] = jnp.zeros(shape, jnp.float32)
  return out


def _widened(w, factor):
  """`w` in the wider of its and the factor's dtypes: a bfloat16 base (config.train.base_dtype)
  merges its float32 factors without rounding them away."""
  return w.astype(jnp.promote_types(w.dtype, factor.dtype))


def _lora_merge(spec: Mapping, params: dict, factors: Mapping) -> dict:
  for path, n in spec['fan_in_ndim'].items():
    update = spec['scaling'] * (factors[f'{path}/{LORA_A}'] @ factors[f'{path}/{LORA_B}'])
    w = _widened(params[path], update)
    rows = w.reshape(math.prod(w.shape[:n]), -1)
    cols = spec['columns'].get(path)
    if cols is None:
      rows = rows + update.astype(w.dtype)
    else:
      rows = rows.at[:, np.asarray(cols, np.int32)].add(update.astype(w.dtype))
    params[path] = rows.reshape(w.shape)
  return params


# ----------------------------------------------------------------------------- SSF


def ssf_spec(
  shapes: Mapping[str, tuple], roles: Mapping[str, str], *, targets: Iterable[str], family: str = ''
) -> dict:
  """The SSF spec: {module: weight leaf name} of every backbone module with a bias and a
  kernel (linear, conv) or a scale (norm) whose path a target regex matches (empty: the
  family's SSF_FAMILY_TARGETS, else SSF_TARGETS)."""
  default = SSF_FAMILY_TARGETS.get(family, SSF_TARGETS)
  compiled = _compile(tuple(targets) or default, 'config.ssf.targets')
  modules = {}
  for path, shape in shapes.items():
    if not path.endswith('/bias') or tree_lib.is_head(path):
      continue
    module = path[: -len('/bias')]
    weight = next((w for w in ('kernel', 'scale') if f'{module}/{w}' in shapes), None)
    if weight is None or not any(c.search(module) for c in compiled):
      continue
    w_shape = tuple(shapes[f'{module}/{weight}'])
    if w_shape[len(w_shape) - len(shape) :] != tuple(shape):
      continue  # the bias is not per output channel of this weight
    for leaf in (path, f'{module}/{weight}'):
      if roles[leaf] != 'freeze':
        raise UserError(f'SSF targets {module!r}, but {leaf!r} has role {roles[leaf]}')
    modules[module] = weight
  if not modules:
    raise UserError(f'config.ssf.targets {list(targets)} match no linear, conv or norm module')
  return {'rule': 'ssf', 'modules': dict(sorted(modules.items()))}


def _ssf_init(spec: Mapping, shapes: Mapping[str, tuple], rng: jax.Array) -> dict:
  out = {}
  for i, module in enumerate(spec['modules']):
    shape = tuple(shapes[f'{module}/bias'])
    k1, k2 = jax.random.split(jax.random.fold_in(rng, i))
    out[f'{module}/{SSF_SCALE}'] = 1.0 + 0.02 * jax.random.normal(k1, shape, jnp.float32)
    out[f'{module}/{SSF_SHIFT}'] = 0.02 * jax.random.normal(k2, shape, jnp.float32)
  return out


def _ssf_merge(spec: Mapping, params: dict, factors: Mapping) -> dict:
  for module, weight in spec['modules'].items():
    scale = factors[f'{module}/{SSF_SCALE}']
    shift = factors[f'{module}/{SSF_SHIFT}']
    w = _widened(params[f'{module}/{weight}'], scale)
    b = _widened(params[f'{module}/bias'], shift)
    params[f'{module}/{weight}'] = w * scale.astype(w.dtype)
    params[f'{module}/bias'] = b * scale.astype(b.dtype) + shift.astype(b.dtype)
  return params


def _ssf_shapes(spec: Mapping, shapes: Mapping[str, tuple]) -> dict[str, tuple]:
  out = {}
  for module in spec['modules']:
    shape = tuple(shapes[f'{module}/bias'])
    out[f'{module}/{SSF_SCALE}'] = shape
    out[f'{module}/{SSF_SHIFT}'] = shape
  return out


# ----------------------------------------------------------------------------- one interface

_KINDS = {
  'lora': (_lora_shapes, _lora_init, _lora_merge),
  'ssf': (_ssf_shapes, _ssf_init, _ssf_merge),
}


def _kind(spec: Mapping):
  rule = spec.get('rule') if isinstance(spec, Mapping) else None
  if rule not in _KINDS:
    raise UserError(f'unknown factor rule {rule!r} (known: {", ".join(_KINDS)})')
  return _KINDS[rule]


def factor_shapes(spec: Mapping, shapes: Mapping[str, tuple]) -> dict[str, tuple]:
  """{factor name: shape} of a spec on a model of flat `shapes`."""
  return _kind(spec)[0](spec, shapes)


def init(spec: Mapping, shapes: Mapping[str, tuple], rng: jax.Array) -> dict[str, jax.Array]:
  """Fresh factors (float32) of a spec."""
  return _kind(spec)[1](spec, shapes, rng)


def merge(spec: Mapping, params: Mapping[str, Any], factors: Mapping[str, Any]) -> dict:
  """The flat params with the factors merged into their leaves (a new dict)."""
  return _kind(spec)[2](spec, dict(params), factors)


def check(spec: Mapping, shapes: Mapping[str, tuple], factors: Mapping[str, Any], where: str) -> None:
  """A UserError naming `where` unless `factors` are exactly the spec's, with its shapes."""
  try:
    want = factor_shapes(spec, shapes)
  except KeyError as e:
    raise UserError(f'{where}: its factors name {e.args[0]!r}, which the base lacks') from None
  got = {k: tuple(np.shape(v)) for k, v in factors.items()}
  if got != want:
    diff = sorted(set(got) ^ set(want)) or sorted(k for k in got if got[k] != want[k])
    raise UserError(f'{where}: its factors do not fit the base (first differences: {diff[:4]})')
