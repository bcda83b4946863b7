"""K-entry weight gradients: the forward and backward of a sparse delta without dense kernels.

With the effective kernel ``base + scatter(delta)`` in the forward, autodiff keeps
a copy of every selected kernel for the backward and computes each kernel's dense
``[fan_in, neurons]`` weight gradient before gathering its K entries. Here the
module runs on its frozen base kernel (no weight gradient: the base is not
differentiated) and the delta adds its term beside it::

    y = module(x; base) + correction(x),   correction(x)[..., n] = sum_k x[..., idx[n, k]] * delta[n, k]

`correction` has a custom VJP: the input gradient gets ``dy[..., n] * delta[n, k]``
scattered back at ``idx[n, k]``, and the delta's gradient is
``sum_tokens x[..., idx[n, k]] * dy[..., n]``: K entries per neuron, no dense
buffer, no scatter of the delta into a kernel. Its residual is the layer's input,
which the base matmul's own backward does not need but the layer before
usually keeps.

`interceptor` applies this through `flax.linen.intercept_methods` to the modules
whose kernel is selected, so the models stay plain Flax: a `nn.Dense`, a
`nn.DenseGeneral` contracting its trailing axes (ViT's q/k/v/out), and a `nn.Conv`
whose strides equal its window with VALID padding (the patch embeddings and
ConvNeXt's downsampling: a Dense on patches). Any other selected kernel (the
depthwise 7x7 convs of ConvNeXt) runs its module on the effective kernel, as
every kernel does under ``mode='off'``; `takes_sparse` is the rule.

Status (README "The cost of a step"): gradients equal autodiff's and the step's
FLOPs drop by the dense weight gradients, but on XLA:CPU the gathers and the
scatter are not fused, their (tokens, neurons) temporaries raise the compiled
peak, and each layer's forward and backward is slower than the dense one even at
K = 1; so ``config.train.sparse_grad`` is 'off' by default and 'auto' never takes
it on CPU. Its GPU cost is not measured yet.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from gps_jax import sparse

MODES = ('auto', 'on', 'off')

# auto: K-entry gradients where K is at most this share of the fan-in, on accelerators.
# The correction costs a few T*N*K gathers and adds per pass against the T*F*N
# multiply-adds of the dense weight gradient it replaces, but gathers and scatters run
# far below matmul speed. On XLA:CPU the layer sweep (tools/benchmark.py --layers, README)
# found it slower for every ViT-S kernel even at K = 1, so auto never takes it there; on a
# GPU this share is provisional until the sweep runs on one. Depthwise convs always take
# the dense path (their dense weight gradient costs what their forward costs).
MAX_K_SHARE = 1 / 64
SLOWER_ON = ('cpu',)  # backends where the layer sweep found the K-entry path slower


# -- the op --------------------------------------------------------------------
@jax.custom_vjp
def correction(x: jax.Array, idx: jax.Array, delta: jax.Array) -> jax.Array:
  """(T, F) inputs, (N, K) fan-in indices and values -> (T, N): x @ scatter(delta)."""
  # Multiply and sum, not einsum: a dot cannot take the gather into its fusion, a reduction
  # can, so a compiler may avoid materialising the (T, N, K) gathered inputs (XLA:CPU does
  # not: README "The cost of a step").
  return jnp.sum(jnp.take(x, idx, axis=1) * delta, axis=-1)


def _correction_fwd(x, idx, delta):
  return correction(x, idx, delta), (x, idx, delta)


def _correction_bwd(res, dy):
  x, idx, delta = res
  d_delta = jnp.sum(jnp.take(x, idx, axis=1) * dy[:, :, None], axis=0).astype(delta.dtype)
  # dx[:, f] += dy[:, n] * delta[n, k] wherever idx[n, k] == f. A column scatter: on
  # XLA:CPU about as fast as a row segment-sum with its two transposes, and with fewer
  # temporaries in XLA's memory analysis (no transposed copies).
  dx = jnp.zeros_like(x).at[:, idx].add((dy[:, :, None] * delta[None]).astype(x.dtype))
  return dx, None, d_delta


correction.defvjp(_correction_fwd, _correction_bwd)


# -- which modules take it -------------------------------------------------------
def _trailing(axes, ndim: int) -> tuple[int, ...]:
  axes = (axes,) if isinstance(axes, int) else tuple(axes)
  return tuple(a % ndim for a in axes)


def kind_of(module: nn.Module, x: jax.Array, fan_in_ndim: int) -> str | None:
  """'dense' or 'patch' when `module` (called on `x`) is a matmul on its trailing axes, else None."""
  if isinstance(module, nn.Dense):
    return 'dense' if fan_in_ndim == 1 else None
  if isinstance(module, nn.DenseGeneral):
    axes = _trailing(module.axis, x.ndim)
    trailing = tuple(range(x.ndim - len(axes), x.ndim))
    if module.batch_dims or axes != trailing or len(axes) != fan_in_ndim:
      return None
    return 'dense'
  if isinstance(module, nn.Conv):
    ks = tuple(module.kernel_size)
    strides = module.strides if module.strides is not None else 1
    strides = (strides,) * len(ks) if isinstance(strides, int) else tuple(strides)
    plain = all(
      d in (None, 1) or (not isinstance(d, int) and all(v == 1 for v in d))
      for d in (module.input_dilation, module.kernel_dilation)
    )
    valid = module.padding == 'VALID' or module.padding == 0
    if (
      len(ks) == 2
      and x.ndim == 4
      and strides == ks
      and valid
      and plain
      and module.feature_group_count == 1
      and fan_in_ndim == 3
    ):
      return 'patch'
  return None


def takes_sparse(
  kind: str | None, k: int, fan_in: int, mode: str, backend: str | None = None
) -> bool:
  """The rule: K-entry gradients for a matmul kind under `mode`; 'auto': K <= MAX_K_SHARE *
  fan-in, and never on a backend of SLOWER_ON (default: jax's default backend)."""
  if kind is None or mode == 'off':
    return False
  if mode == 'on':
    return True
  backend = backend or jax.default_backend()
  return backend not in SLOWER_ON and k <= MAX_K_SHARE * fan_in


def _patches(x: jax.Array, ks: tuple[int, int]) -> jax.Array:
  """(B, H, W, C) -> (B, H/kh, W/kw, kh*kw*C) in the (kh, kw, C) order of a conv kernel's rows."""
  b, h, w, c = x.shape
  kh, kw = ks
  oh, ow = h // kh, w // kw
  x = x[:, : oh * kh, : ow * kw].reshape(b, oh, kh, ow, kw, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, oh, ow, kh * kw * c)


def _correction_of(module: nn.Module, x: jax.Array, kind: str, idx, delta, fan_in_ndim: int):
  """(tokens, neurons): the delta's term of `module` on `x`, in the module's compute dtype."""
  dtype = module.dtype or jnp.result_type(x, delta)
  if kind == 'patch':
    x = _patches(x, tuple(module.kernel_size))
    fan_in_ndim = 1
  rows = x.reshape(-1, _prod(x.shape[x.ndim - fan_in_ndim :])).astype(dtype)
  return correction(rows, idx, delta.astype(dtype))


def _prod(shape) -> int:
  n = 1
  for d in shape:
    n *= d
  return n


def _effective_call(module: nn.Module, kernel: jax.Array, args, kwargs):
  """The module on another kernel: a clone applied alone (Dense / Conv own no other parameters)."""
  params = dict(module.variables['params'])
  params['kernel'] = kernel
  return module.clone(parent=None).apply({'params': params}, *args, **kwargs)


def interceptor(
  entries: Mapping[str, tuple[jax.Array, jax.Array, int]], mode: str, seen: dict
) -> Callable:
  """A `flax.linen.intercept_methods` interceptor for selected kernels.

  `entries`: {kernel path: (indices, delta values, fan_in_ndim)}; `seen` collects
  {path: 'sparse' | 'dense'}, the path each one took (checked by `forward`).
  """

  def intercept(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name != '__call__' or module.scope is None:
      return next_fun(*args, **kwargs)
    path = '/'.join(module.scope.path) + '/kernel'
    if path not in entries:
      return next_fun(*args, **kwargs)
    idx, delta, fan_in_ndim = entries[path]
    x = args[0] if args else kwargs['inputs']  # flax's Dense / DenseGeneral / Conv argument
    kernel = module.get_variable('params', 'kernel')
    fan_in = _prod(kernel.shape[:fan_in_ndim])
    kind = kind_of(module, x, fan_in_ndim)
    if takes_sparse(kind, idx.shape[1], fan_in, mode):
      seen[path] = 'sparse'
      y = next_fun(*args, **kwargs)  # the frozen base: no weight gradient
      extra = _correction_of(module, x, kind, idx, delta, fan_in_ndim)
      return y + extra.reshape(y.shape).astype(y.dtype)
    seen[path] = 'dense'
    effective = sparse.scatter_add(kernel, idx, delta, fan_in_ndim)
    return _effective_call(module, effective, args, kwargs)

  return intercept


def forward(
  apply_fn: Callable,
  params: Mapping[str, Any],
  entries: Mapping[str, tuple[jax.Array, jax.Array, int]],
  mode: str,
  *args,
  **kwargs,
) -> tuple[Any, dict]:
  """apply_fn({'params': params}, *args) with each selected kernel's delta added by `interceptor`.

  `params` is the nested tree with the *base* kernels at the selected paths.
  Returns (output, {path: 'sparse' | 'dense'}); a selected kernel that no
  intercepted module owns is an error (its delta would silently do nothing).
  """
  seen: dict[str, str] = {}
  with nn.intercept_methods(interceptor(entries, mode, seen)):
    out = apply_fn({'params': params}, *args, **kwargs)
  missing = sorted(set(entries) - set(seen))
  if missing:
    raise ValueError(
      f'selected kernels {missing[:3]} are not the kernel of a flax Dense/DenseGeneral/Conv '
      "module; use config.train.sparse_grad='off' for this model"
    )
  return out, seen
