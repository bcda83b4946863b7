"""The one strict fit of checkpoint arrays to a model's parameters, for every file and family.

A checkpoint rarely matches a model key for key: another class count, another image or
window size, or a file for another architecture. :func:`fit_params` makes the few
adaptations a fine-tuning run wants and refuses everything else, naming every problem in
one ValueError, so a wrong file fails at once instead of training from a half-loaded model.

How a file names and shapes the parameters is a :class:`Layout`: the identity for files in
the gps_jax / vit_jax layout ('/'-joined Flax paths), a name mapping and array transform
for timm state dicts (:mod:`gps_jax.models.timm_layout`). The adaptations:

* the file's classifier (names under ``layout.head_prefix``) is kept only when it fits the
  model's head exactly; otherwise, or when the file has none, the model keeps its fresh
  head (``fresh_head``): a new task gets a new head;
* entries under an ``optional`` prefix the model lacks are dropped (ViT's ``pre_logits``
  when the model has no representation_size, as vit_jax does);
* a float entry of another shape goes through the ``resize`` hooks (position embeddings,
  relative-position tables) before it is compared;
* the modules that parameter-efficient methods add to a backbone (adapters, VPT prompts:
  paths matching :data:`ADDED_PARAMS`) are not in a pretrained file: a module the file lacks
  keeps the model's fresh init (``fresh_added``; adapters start as the identity). A file
  that has one (a fine-tuned model saved under its Flax paths) must have all of its leaves,
  at the model's shapes, and is loaded like any other entry.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from gps_jax.tree import flat, unflat

log = logging.getLogger(__name__)

# The parameters that parameter-efficient fine-tuning adds to a backbone, which no pretrained
# file has: the Adapter modules (gps_jax.models.layers) and ViT's VPT prompts.
ADDED_PARAMS = r'(^|/)(adapter_attn|adapter_mlp|vpt_prompts)(/|$)'
_ADDED = re.compile(ADDED_PARAMS)


def added_module(path: str) -> Optional[str]:
  """The added module a Flax path belongs to ('Transformer/encoderblock_3/adapter_mlp',
  'Transformer/vpt_prompts'), or None for a path of the backbone itself."""
  m = _ADDED.search(path)
  return path[: m.end(2)] if m else None


# hook(flax path, file array, wanted file shape) -> resized array, or None when not its key.
ResizeHook = Callable[[str, np.ndarray, tuple], Optional[np.ndarray]]


@dataclasses.dataclass(frozen=True)
class Layout:
  """How one kind of file names and shapes a model's parameters.

  ``file_name`` maps a Flax path to the file's name for it, ``file_shape`` a Flax shape to
  the file's, ``to_flax`` a (fitting) file array to the Flax array. ``prepare`` rewrites a
  whole file first where one entry is not one parameter (ViT's stacked qkv); names ending
  in an ``ignore`` suffix are buffers, not parameters. ``label`` names a file in messages
  when no path is given. ``detect`` (file arrays -> bool) recognises a file in this layout
  where a family reads more than one layout of the same file type (SAM: the official
  checkpoints and the ``transformers`` port).
  """

  file_name: Callable[[str], str] = lambda path: path
  file_shape: Callable[[str, tuple], tuple] = lambda path, shape: shape
  to_flax: Callable[[str, np.ndarray], np.ndarray] = lambda path, array: array
  head_prefix: str = 'head/'
  ignore: tuple[str, ...] = ()
  optional: tuple[str, ...] = ()
  resize: tuple[ResizeHook, ...] = ()
  prepare: Optional[Callable[[Mapping[str, Any], Any], Mapping[str, Any]]] = None
  label: str = 'checkpoint'
  detect: Optional[Callable[[Mapping[str, Any]], bool]] = None

  def params(self, arrays: Mapping[str, Any], model, source: str = '', *, init=None, rng=None):
    """Nested float32 params of ``model`` from a file's arrays (see :func:`fit_params`).

    ``init`` (the model's fresh params) gives the expected shapes and the fresh head;
    without it shapes come from ``jax.eval_shape`` and the head from a jitted init.
    """
    if self.prepare:
      try:
        arrays = self.prepare(arrays, model)
      except ValueError as e:
        raise ValueError(f'{source or self.label}: {e}') from None
    return fit_params(
      arrays,
      expected_shapes(model, init, rng),
      source or self.label,
      fresh_head=lambda: fresh_head(model, init, rng),
      fresh_added=lambda: fresh_added(model, init, rng),
      layout=self,
    )


FLAX_LAYOUT = Layout()


def _dummy_init(model, rng):
  """(rng, a function rng -> model.init(...)['params'] on one dummy image)."""
  rng = jax.random.PRNGKey(0) if rng is None else rng
  dummy = jnp.zeros((1, model.image_size, model.image_size, 3), jnp.float32)
  return rng, lambda r: model.init(r, dummy, train=False)['params']


def init_params(model, rng=None) -> dict:
  """The model's freshly initialised params (one jitted init on a dummy image)."""
  rng, init = _dummy_init(model, rng)
  return jax.device_get(jax.jit(init)(rng))


def expected_shapes(model, init: Optional[Mapping] = None, rng=None) -> dict[str, tuple]:
  """Flat {path: shape} of the model's params: from ``init`` or ``jax.eval_shape`` (nothing
  is computed)."""
  if init is not None:
    return {k: tuple(np.shape(v)) for k, v in flat(init).items()}
  rng, init_fn = _dummy_init(model, rng)
  return {k: tuple(v.shape) for k, v in flat(jax.eval_shape(init_fn, rng)).items()}


def fresh_head(model, init: Optional[Mapping] = None, rng=None) -> dict[str, Any]:
  """Flat {'head/...': value} of the model's own head init (from ``init`` if given)."""
  if init is not None:
    return {k: v for k, v in flat(init).items() if k.startswith('head/')}
  rng, init_fn = _dummy_init(model, rng)
  # Under jit, XLA drops everything but the head's initialisers: cheap even for ViT-L.
  head = jax.jit(lambda r: init_fn(r)['head'])(rng)
  return {f'head/{k}': v for k, v in flat(head).items()}


def fresh_added(model, init: Optional[Mapping] = None, rng=None) -> dict[str, Any]:
  """Flat {path: value} of the model's own init of its added modules (ADDED_PARAMS), from
  ``init`` if given; empty for a model without adapters or prompts."""
  if init is not None:
    return {k: v for k, v in flat(init).items() if added_module(k)}
  rng, init_fn = _dummy_init(model, rng)
  # Under jit XLA keeps only the added modules' initialisers.
  return jax.device_get(
    jax.jit(lambda r: {k: v for k, v in flat(init_fn(r)).items() if added_module(k)})(rng)
  )


def _fit_added(loaded: dict, added: Mapping[str, tuple], fresh, source: str):
  """Fits the added modules: (flat values, problems). Their file entries (under the Flax
  path, whatever the layout) are taken out of ``loaded``; a module the file lacks entirely
  gets ``fresh()``, one it has must be whole, at the model's shapes."""
  modules: dict[str, list[str]] = {}
  for path in sorted(added):
    modules.setdefault(added_module(path), []).append(path)
  out, problems, kept = {}, [], []
  for module, paths in modules.items():
    if not any(p in loaded for p in paths):
      kept.append(module)
      continue
    for p in paths:
      value = loaded.pop(p, None)
      if value is None:
        problems.append(f'missing {p} {added[p]} (the file has part of {module})')
      elif value.shape != added[p]:
        problems.append(f'wrong shape {p}: file {value.shape}, model {added[p]}')
      elif value.dtype.kind != 'f':
        problems.append(f'non-float dtype {p} {value.dtype}')
      else:
        out[p] = np.asarray(value, np.float32)
  if kept:
    if fresh is None:
      problems += [f'missing {p} {added[p]}' for m in kept for p in modules[m]]
    else:
      log.info('%s: %d added modules (adapters / prompts) keep their fresh init', source, len(kept))
      init = fresh()
      out.update({p: np.asarray(init[p], np.float32) for m in kept for p in modules[m]})
  return out, problems


def _drop_unfit_head(loaded: dict, want: Mapping, model_head: set, source: str, layout) -> None:
  """Drops the file's classifier unless it is exactly the model's (same names, shapes)."""
  file_head = {k for k in loaded if k.startswith(layout.head_prefix)}
  fits = file_head == model_head and all(loaded[k].shape == want[k] for k in model_head)
  if file_head and not fits:
    log.info(
      '%s: dropping head %s; the model head %s keeps its fresh init',
      source,
      {k: loaded[k].shape for k in sorted(file_head)},
      {k: want[k] for k in sorted(model_head)},
    )
    for k in file_head:
      del loaded[k]


def _resize(name: str, path: str, value: np.ndarray, want: tuple, source: str, hooks) -> np.ndarray:
  """The first hook's resize of a mis-shaped entry, else the entry as is (then reported as
  mis-shaped). A hook's refusal is an error naming the file and the entry."""
  for hook in hooks:
    try:
      resized = hook(path, value, want)
    except ValueError as e:
      raise ValueError(f'{source}: {name}: {e}') from None
    if resized is not None:
      log.info('%s: resized %s from %s to %s', source, name, value.shape, resized.shape)
      return resized
  return value


def fit_params(
  loaded: Mapping[str, Any],
  expected: Mapping[str, tuple],
  source: str,
  *,
  fresh_head: Callable[[], Mapping[str, Any]],
  fresh_added: Optional[Callable[[], Mapping[str, Any]]] = None,
  layout: Layout = FLAX_LAYOUT,
) -> dict:
  """A file's flat arrays -> nested float32 params with exactly the ``expected`` paths/shapes.

  ``loaded`` is keyed and shaped as ``layout`` says (``layout.prepare`` already applied),
  ``expected`` is the model's flat {Flax path: shape}; ``source`` names the file in
  messages; ``fresh_head()`` gives the model's own head init, used when the file's head is
  dropped or absent; ``fresh_added()`` the model's init of its added modules (adapters,
  prompts), used for those the file lacks (without it they are missing). After the
  adaptations of the module doc, every missing, unexpected, mis-shaped or non-float entry
  is named (file name, and the Flax path where it differs) in one ValueError. ``loaded`` is
  not modified.
  """
  added = {p: tuple(s) for p, s in expected.items() if added_module(p)}
  names = {layout.file_name(p): p for p in expected if p not in added}  # file name -> path
  want = {n: tuple(layout.file_shape(p, expected[p])) for n, p in names.items()}
  loaded = {k: np.asarray(v) for k, v in loaded.items() if not k.endswith(layout.ignore)}
  out, problems = _fit_added(loaded, added, fresh_added, source)
  model_head = {n for n, p in names.items() if p.startswith('head/')}
  _drop_unfit_head(loaded, want, model_head, source, layout)
  for prefix in layout.optional:
    if not any(n.startswith(prefix) for n in want):
      for k in [k for k in loaded if k.startswith(prefix)]:
        log.info('%s: dropping %s (the model has no %s)', source, k, prefix)
        del loaded[k]

  for name in sorted(want):
    path = names[name]
    where = f' (for {path})' if path != name else ''
    if name not in loaded:
      if name not in model_head:
        problems.append(f'missing {name} {want[name]}{where}')
      continue
    value = loaded[name]
    if value.shape != want[name] and value.dtype.kind == 'f':
      value = _resize(name, path, value, want[name], source, layout.resize)
    if value.shape != want[name]:
      problems.append(f'wrong shape {name}: file {value.shape}, model {want[name]}{where}')
    elif value.dtype.kind != 'f':
      problems.append(f'non-float dtype {name} {value.dtype}{where}')
    else:
      out[path] = np.ascontiguousarray(layout.to_flax(path, value), dtype=np.float32)
  problems += [f'unexpected {k} {loaded[k].shape}' for k in sorted(set(loaded) - set(want))]
  if problems:
    raise ValueError(
      f'{source} does not fit the model ({len(problems)} problems):\n  ' + '\n  '.join(problems)
    )
  if model_head - set(loaded):
    out.update({k: np.asarray(v, np.float32) for k, v in fresh_head().items()})
  return unflat(out)
