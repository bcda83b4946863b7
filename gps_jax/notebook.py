"""What the notebooks (``notebooks/*.ipynb``) need beyond the command line's modules.

* `load_config` — a config file as ``--config`` names it (``'configs/vtab.py:cifar100'``),
  with overrides as ``--config.<key>=<value>`` would set them;
* `LiveCurves` — a run's metrics log (``metrics.jsonl`` and TensorBoard, as
  `gps_jax.metrics.MetricsLog`) that also redraws the loss and accuracy curves in the
  cell's output while the run trains: pass it to `gps_jax.experiment.run(..., log=)`;
* `show`, `show_figure` — PNG files (those of `gps_jax.report`, `gps_jax.plots`) and
  matplotlib figures in the output;
* `devices` and `memory_in_use` — what runs the code, and the memory it holds;
* `predict`, `accuracy` — the predictions and top-1 accuracy of any flat parameters (an
  applied delta, a composed model) on a split of a config's data set.

The figures are those of `gps_jax.plots`: one plotting module for the report command,
the reproduce tool and the notebooks.
"""

from __future__ import annotations

import importlib.util
import os
import resource
import sys
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np

from gps_jax import backbone as backbone_lib
from gps_jax import config_check
from gps_jax import errors
from gps_jax import experiment
from gps_jax import metrics as metrics_lib
from gps_jax import plots
from gps_jax import tree as tree_lib
from gps_jax import weights
from gps_jax.data import splits as splits_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def repo_path(path: str) -> str:
  """`path` with ``~`` expanded; a relative path that is not under the working directory
  is taken from the repository root (a notebook runs in ``notebooks/``)."""
  path = os.path.expanduser(path)
  if os.path.isabs(path) or os.path.exists(path):
    return os.path.abspath(path)
  return os.path.join(REPO, path)


def load_config(spec: str, overrides: Mapping[str, Any] | None = None) -> ml_collections.ConfigDict:
  """The config of `spec` ('file.py' or 'file.py:arg', as ``--config``), then `overrides`:
  {'train.epochs': 2, 'data.data_dir': '~/tfds'} set as ``--config.<key>=<value>`` would
  (an unknown key is a `UserError` naming the nearest keys)."""
  path, sep, arg = spec.partition(':')
  path = repo_path(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{spec}: no such config file')
  spec_ = importlib.util.spec_from_file_location('gps_jax_notebook_config', path)
  module = importlib.util.module_from_spec(spec_)
  spec_.loader.exec_module(module)
  config = module.get_config(arg) if sep else module.get_config()  # as ml_collections' flag
  for key, value in (overrides or {}).items():
    message = config_check.unknown_key(config, key)
    if message:
      raise errors.UserError(message)
    *parents, leaf = key.split('.')
    node = config
    for part in parents:
      node = node[part]
    node[leaf] = value
  return config


def _display(obj, handle=None):
  from IPython import display  # only where a notebook shows it

  if handle is None:
    return display.display(obj, display_id=True)
  handle.update(obj)
  return handle


def show(*paths: str) -> None:
  """Shows PNG files in the cell's output (one after the other)."""
  from IPython import display

  for path in paths:
    display.display(display.Image(filename=path))


def show_figure(fig) -> None:
  """Shows a matplotlib `Figure` in the cell's output (as a PNG, whatever the backend:
  `gps_jax.plots` selects Agg, which draws nothing by itself)."""
  from IPython import display

  display.display(display.Image(data=plots.png_bytes(fig), format='png'))


class LiveCurves(metrics_lib.MetricsLog):
  """A `MetricsLog` that also keeps its records and redraws `plots.curves_figure` of them
  in the cell's output: at every evaluation, every `every`-th logged training step and
  when the run closes it. `workdir` None: no files, the plot only."""

  def __init__(self, workdir: str | None, label: str = 'run', title: str = '', every: int = 5):
    super().__init__(workdir)
    self.label, self.title, self.every = label, title, max(1, every)
    self.records: list[dict] = []
    self._trains = 0
    self._handle = None

  def write(self, kind: str, step: int, **values) -> None:
    super().write(kind, step, **values)
    self.records.append({'kind': kind, 'step': int(step), **{k: float(v) for k, v in values.items()}})
    self._trains += kind == 'train'
    if kind != 'train' or self._trains % self.every == 0:
      self.draw()

  def draw(self) -> None:
    """Redraws the curves of the records so far in place."""
    if not self.records or not metrics_lib.is_writer():
      return
    from IPython import display

    png = plots.png_bytes(plots.curves_figure({self.label: self.records}, self.title))
    self._handle = _display(display.Image(data=png, format='png'), self._handle)

  def close(self) -> None:
    self.draw()
    super().close()


def devices() -> str:
  """One line per device: platform, kind and, where JAX reports it, its memory."""
  lines = [f'jax {jax.__version__}, backend {jax.default_backend()}, {jax.device_count()} device(s)']
  for d in jax.local_devices():
    stats = d.memory_stats() or {}
    limit = stats.get('bytes_limit')
    mem = f', {limit / 2**30:.1f} GiB usable' if limit else ''
    lines.append(f'  {d.id}: {d.platform} {d.device_kind}{mem}')
  return '\n'.join(lines)


def memory_in_use() -> dict:
  """Memory held now and at peak: per accelerator from JAX's allocator ('bytes_in_use',
  'peak_bytes_in_use' of device 0), and this process's peak resident set ('max_rss_bytes',
  on CPU the only figure: XLA:CPU keeps no allocator statistics)."""
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  out = {'max_rss_bytes': rss if sys.platform == 'darwin' else rss * 1024}
  stats = jax.local_devices()[0].memory_stats() or {}
  for key in ('bytes_in_use', 'peak_bytes_in_use', 'bytes_limit'):
    if key in stats:
      out[key] = int(stats[key])
  return out


def predict(
  config: ml_collections.ConfigDict, params: Mapping[str, Any], role: str = 'test', model=None
) -> tuple[np.ndarray, np.ndarray]:
  """(predicted classes, labels) of the flat `params` on every example of the split `role`
  of `config`'s data set, with `config`'s eval preprocessing; `model` defaults to the
  one `config` builds."""
  if model is None:
    num_classes = splits_lib.num_classes(config.data)
    model = weights.build_model(backbone_lib.model_config_of(config, num_classes))
  variables = {'params': tree_lib.unflat({p: np.asarray(v) for p, v in params.items()})}

  @jax.jit
  def classes(variables, image):
    logits, _ = model.apply(variables, image, train=False)
    return logits.argmax(-1)

  _, batches = experiment.eval_batches(config, role)
  predicted, labels = [], []
  for batch in batches():
    keep = np.asarray(batch['mask'], bool)  # the padding of the last batch is not an example
    predicted.append(np.asarray(classes(variables, batch['image']))[keep])
    labels.append(np.asarray(batch['label'])[keep])
  return np.concatenate(predicted), np.concatenate(labels)


def run_params(config: ml_collections.ConfigDict, run_dir: str) -> tuple[Any, dict]:
  """(backbone, fine-tuned flat params) of the finished run of `config` in `run_dir`: the
  config's base (its checkpoint, or the same random init, from the run's seed) with the
  run's delta (``run_dir/checkpoint``) applied; the delta's base SHA-256 must be the base's."""
  from gps_jax import delta as delta_lib

  bb = backbone_lib.setup_backbone(config, experiment.run_keys(config.seed)[0])
  d = delta_lib.load(os.path.join(run_dir, 'checkpoint'))
  want = ((d.manifest or {}).get('base') or {}).get('sha256')
  if want != bb.base_sha256:
    raise errors.UserError(
      f'{run_dir}: the delta was trained from a base with sha256 {want}, but '
      f'config.model.checkpoint={config.model.checkpoint!r} has {bb.base_sha256}'
    )
  return bb, delta_lib.apply_to(d, {p: np.asarray(v) for p, v in bb.params.items()})


def accuracy(
  config: ml_collections.ConfigDict, params: Mapping[str, Any], role: str = 'test', model=None
) -> float:
  """Top-1 accuracy (0–1) of `predict`."""
  predicted, labels = predict(config, params, role, model)
  if not labels.size:
    raise errors.UserError(f'{role}: the split has no example')
  return float((predicted == labels).mean())


INJECTED_TAG = 'injected-parameters'


def execute(path: str, params: Mapping[str, Any], env: Mapping[str, str] | None = None,
            note: str = '', timeout: int = 1800):
  """Runs the notebook `path` top to bottom in a fresh IPython kernel (nbclient), in the
  notebook's folder, with `params` assigned in a cell tagged ``injected-parameters`` right
  after the one tagged ``parameters`` (papermill's convention; a previous injected cell is
  replaced), `note` as that cell's first comment lines; returns the executed notebook.

  A cell that raises stops the run with nbclient's `CellExecutionError`, which shows it.
  """
  import nbformat
  from nbclient import NotebookClient

  nb = nbformat.read(path, as_version=4)
  nb.cells = [c for c in nb.cells if INJECTED_TAG not in c.metadata.get('tags', ())]
  tagged = [i for i, c in enumerate(nb.cells) if 'parameters' in c.metadata.get('tags', ())]
  if len(tagged) != 1:
    raise errors.UserError(f'{path}: {len(tagged)} cells tagged "parameters", not one')
  lines = [f'# {line}' for line in note.splitlines()] + [f'{k} = {v!r}' for k, v in params.items()]
  if lines:
    cell = nbformat.v4.new_code_cell('\n'.join(lines))
    cell.metadata['tags'] = [INJECTED_TAG]
    nb.cells.insert(tagged[0] + 1, cell)
  client = NotebookClient(
    nb,
    timeout=timeout,
    kernel_name='python3',
    resources={'metadata': {'path': os.path.dirname(os.path.abspath(path))}},
  )
  client.execute(env=dict(env if env is not None else os.environ))
  return nb
