"""Pieces shared by the backbones (ViT, Swin, ConvNeXt): stochastic depth and its per-block
rates, the torch-exact LayerNorm, timm's Mlp, the bottleneck Adapter and the normalisation
constants of the checkpoints. None of them names a parameter by itself: the callers pass
``name=``, so the parameter trees of the models do not depend on this module."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# timm's IMAGENET_DEFAULT_MEAN / _STD: the normalisation of the Swin and ConvNeXt checkpoints.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# timm's IMAGENET_INCEPTION_MEAN / _STD: [-1, 1] inputs, as the vit_jax / AugReg ViTs expect.
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)

# timm's trunc_normal_(std=.02), the Linear / conv init of Swin and ConvNeXt.
trunc_normal_init = nn.initializers.truncated_normal(stddev=0.02)


def drop_path(module: nn.Module, x: jax.Array, rate: float, deterministic: bool) -> jax.Array:
  """Stochastic depth: zeroes whole samples of a residual branch with probability ``rate``
  and scales the kept ones by 1/(1-rate). Uses the module's 'dropout' rng."""
  if deterministic or rate == 0.0:
    return x
  keep = 1.0 - rate
  mask = jax.random.bernoulli(module.make_rng('dropout'), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(mask, x / keep, jnp.zeros_like(x))


def drop_path_rates(drop_path_rate: float, depths: Sequence[int]) -> list[list[float]]:
  """Per-stage lists of per-block stochastic-depth rates, linear from 0 to drop_path_rate over
  all blocks of the network, as timm's ``calculate_drop_path_rates(rate, depths,
  stagewise=True)`` (``torch.linspace(0, rate, sum(depths)).split(depths)``)."""
  total = sum(depths)
  rates = [drop_path_rate * k / max(total - 1, 1) for k in range(total)]
  out, start = [], 0
  for d in depths:
    out.append(rates[start : start + d])
    start += d
  return out


def layer_norm(name: str, epsilon: float, dtype: Any) -> nn.LayerNorm:
  """torch's LayerNorm: use_fast_variance=False computes E[(x - mean)^2] as torch does;
  E[x^2] - mean^2 loses precision on a residual stream whose channel mean is large against
  its spread."""
  return nn.LayerNorm(epsilon=epsilon, use_fast_variance=False, dtype=dtype, name=name)


class Mlp(nn.Module):
  """fc1 (C -> hidden_dim) -> exact GELU -> fc2 (hidden_dim -> C) on channels-last inputs:
  timm's ``Mlp`` without dropout (torch's nn.GELU() is the erf form)."""

  hidden_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    y = nn.Dense(self.hidden_dim, dtype=self.dtype, kernel_init=trunc_normal_init, name='fc1')(x)
    y = nn.gelu(y, approximate=False)
    return nn.Dense(x.shape[-1], dtype=self.dtype, kernel_init=trunc_normal_init, name='fc2')(y)


class Adapter(nn.Module):
  """A bottleneck adapter on a residual branch (Houlsby et al. 2019, AdaptFormer's module):
  ``h + up(GELU(down(h)))`` with ``down`` C -> dim and ``up`` dim -> C on channels-last h.

  ``up`` starts at zero (kernel and bias), so a fresh adapter is exactly the identity: adding
  adapters to a pretrained backbone leaves its outputs unchanged until training moves them.
  ``down`` is xavier-uniform with a zero bias, as in AdaptFormer.
  """

  dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h):
    y = nn.Dense(
      self.dim, dtype=self.dtype, kernel_init=nn.initializers.xavier_uniform(),
      bias_init=nn.initializers.zeros, name='down',
    )(h)  # fmt: skip
    y = nn.gelu(y, approximate=False)
    y = nn.Dense(
      h.shape[-1], dtype=self.dtype, kernel_init=nn.initializers.zeros,
      bias_init=nn.initializers.zeros, name='up',
    )(y)  # fmt: skip
    return h + y


def adapter(h, dim: int, name: str, dtype: Any):
  """``Adapter(dim, name=name)(h)`` inside a compact block, or h itself when dim == 0 (no
  adapter, no parameters: the tree of a model without adapters is unchanged)."""
  return Adapter(dim, dtype, name=name)(h) if dim else h


def check_added_fields(label: str, adapter_dim: int, vpt_tokens: int, no_vpt: str = '') -> None:
  """ValueError for a negative adapter_dim / vpt_tokens, or for any prompt tokens in a family
  whose ``no_vpt`` says why VPT is not defined for it."""
  if adapter_dim < 0 or vpt_tokens < 0:
    raise ValueError(
      f'{label}: adapter_dim ({adapter_dim}) and vpt_tokens ({vpt_tokens}) must be >= 0'
    )
  if vpt_tokens and no_vpt:
    raise ValueError(f'{label}: vpt_tokens={vpt_tokens}, but VPT is not defined for {no_vpt}')


REMAT_POLICIES = (
  'nothing_saveable', 'dots_saveable', 'dots_with_no_batch_dims_saveable', 'everything_saveable'
)


def blocks(cls, remat: str = ''):
  """`cls` (a block called as ``block(x, deterministic)``), or under `nn.remat` with the
  `jax.checkpoint_policies` entry `remat` ('' = no rematerialisation): its activations
  are recomputed in the backward pass instead of kept, except what the policy saves."""
  if not remat:
    return cls
  if remat not in REMAT_POLICIES:
    raise ValueError(f'config.train.remat={remat!r}: use one of {", ".join(REMAT_POLICIES)}')
  return nn.remat(cls, policy=getattr(jax.checkpoint_policies, remat), static_argnums=(2,))
