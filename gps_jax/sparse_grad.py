"""K-entry weight gradients: the backward of a sparse delta without dense weight gradients.

With the effective kernel ``base + scatter(delta)`` built by autodiff, the backward
computes each selected kernel's dense ``[fan_in, neurons]`` weight gradient before
gathering its K entries, and keeps the effective kernel for it. Here a selected
kernel's matmul is one op with its own VJP::

    y = x @ (base + scatter(idx, delta))
    dx = dy @ (base + scatter(idx, delta))^T      (the effective kernel rebuilt, then freed)
    d_delta[n, k] = sum_tokens x[..., idx[n, k]] * dy[..., n]

so the weight gradient costs K multiply-adds per neuron and token instead of the
fan-in's, no dense weight-gradient buffer exists, and no effective kernel is kept
from the forward to the backward. Its residual is the layer's input. (Keeping only
the K input columns each neuron reads, where they are fewer, measured no lower on
XLA:CPU: the compiler fuses the gather into the backward and keeps the input anyway.)

`interceptor` applies this through `flax.linen.intercept_methods` to the modules
whose kernel is selected, so the models stay plain Flax: a `nn.Dense`, a
`nn.DenseGeneral` contracting its trailing axes (ViT's q/k/v/out), and a `nn.Conv`
whose strides equal its window with VALID padding (the patch embeddings and
ConvNeXt's downsampling: a Dense on patches). Any other selected kernel (the
depthwise 7x7 convs of ConvNeXt) runs its module on the effective kernel, as
every kernel does under ``mode='off'``; `takes_sparse` is the rule.

The rule is measured (`tools/layer_sweep.py`, README "The cost of a step"):
per layer the K-entry path beats the dense one while K is a small share of the
fan-in; ``config.train.sparse_grad='auto'`` takes it up to `MAX_K_SHARE`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from gps_jax import sparse

MODES = ('auto', 'on', 'off')

# auto: K-entry gradients where K is at most this share of the fan-in. Measured on XLA:CPU
# with the ViT-S/16 and ViT-B/16 kernel shapes (tools/layer_sweep.py, README "The cost of
# a step"): K = 1 is faster than the dense path on every shape (0.70-0.89x); at 1/384 the
# layers range from 0.75x to 1.12x and the whole ViT-B/16 step at K = 2 (every kernel at or
# below 1/384) takes 0.83x full fine-tuning's time against 1.02x with dense weight
# gradients, at less memory; beyond 1/384 the layers lose. A GPU has not run the sweep yet.
# Depthwise convs always take the dense path (their dense weight gradient costs what their
# forward costs).
MAX_K_SHARE = 1 / 384


# -- the op --------------------------------------------------------------------
def effective(base: jax.Array, idx: jax.Array, delta: jax.Array) -> jax.Array:
  """(F, N) base + the (N, K) delta at rows idx, in the wider dtype."""
  return sparse.scatter_add(jnp.asarray(base), idx, delta, 1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def delta_matmul(x: jax.Array, base: jax.Array, idx: jax.Array, delta: jax.Array,
                 precision=None) -> jax.Array:  # fmt: skip
  """(T, F) inputs @ (base + scatter(idx, delta)) -> (T, N), in x's dtype.

  The base is frozen: its cotangent is zero. The delta's gradient has K entries per neuron.
  """
  return jnp.dot(x, effective(base, idx, delta).astype(x.dtype), precision=precision)


def _delta_matmul_fwd(x, base, idx, delta, precision):
  return delta_matmul(x, base, idx, delta, precision), (x, base, idx, delta)


def _after(a: jax.Array, dy: jax.Array) -> jax.Array:
  """`a` plus an exact zero computed from `dy`: a value the backward builds from forward
  tensors alone (the layer input transposed, the effective kernel) then waits for this
  layer's output gradient. XLA:CPU otherwise builds every layer's such buffers at the start
  of the backward and holds them all (optimization barriers it drops): on ViT-S/16 at batch
  8 the step's peak was 1,276 MiB with them and 972 without (README "The cost of a step").
  The zero is 0 * isnan(dy[0]): a NaN or inf gradient does not leak through it."""
  zero = jnp.isnan(dy.reshape(-1)[0]).astype(a.dtype) * 0
  return a + zero


def _delta_matmul_bwd(precision, res, dy):
  x, base, idx, delta = res
  w = effective(_after(jnp.asarray(base), dy), idx, delta)
  dx = jnp.dot(dy, w.astype(dy.dtype).T, precision=precision)
  # Rows of x^T gathered, not columns of x: each row is contiguous, which on XLA:CPU made
  # the gather-reduce 2-3x faster than the column gather.
  d_delta = jnp.einsum('nkt,nt->nk', _after(x, dy).T[idx], dy.T, precision=precision)
  return dx.astype(x.dtype), None, None, d_delta.astype(delta.dtype)


delta_matmul.defvjp(_delta_matmul_fwd, _delta_matmul_bwd)


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


def takes_sparse(kind: str | None, k: int, fan_in: int, mode: str) -> bool:
  """The rule: K-entry gradients for a matmul kind under `mode`; 'auto': K <= MAX_K_SHARE * fan-in."""
  if kind is None or mode == 'off':
    return False
  return mode == 'on' or k <= MAX_K_SHARE * fan_in


def _patches(x: jax.Array, ks: tuple[int, int]) -> jax.Array:
  """(B, H, W, C) -> (B, H/kh, W/kw, kh*kw*C) in the (kh, kw, C) order of a conv kernel's rows."""
  b, h, w, c = x.shape
  kh, kw = ks
  oh, ow = h // kh, w // kw
  x = x[:, : oh * kh, : ow * kw].reshape(b, oh, kh, ow, kw, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, oh, ow, kh * kw * c)


def _sparse_call(module: nn.Module, x: jax.Array, kind: str, kernel, idx, delta, fan_in_ndim: int):
  """What `module` returns on `x` with `kernel` + the delta, its matmul done by `delta_matmul`
  (flax's Dense / DenseGeneral / Conv: promote to the module's dtype, contract, add the bias)."""
  bias = module.get_variable('params', 'bias') if module.use_bias else None
  dtype = module.dtype or jnp.result_type(x, kernel, delta)
  features = kernel.shape[fan_in_ndim:]
  if kind == 'patch':  # (kh, kw, C) windows as the rows of a Dense
    x, fan_in_ndim = _patches(x, tuple(module.kernel_size)), 1
  lead, fan_in = x.shape[: x.ndim - fan_in_ndim], _prod(x.shape[x.ndim - fan_in_ndim :])
  rows = x.reshape(-1, fan_in).astype(dtype)
  y = delta_matmul(rows, kernel.reshape(fan_in, -1), idx, delta, module.precision)
  y = y.reshape(*lead, *features)
  return y if bias is None else y + bias.astype(dtype)


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
      return _sparse_call(module, x, kind, kernel, idx, delta, fan_in_ndim)
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
