"""The notebooks of notebooks/: committed with the outputs of a whole run, and each one
executed top to bottom here (nbclient, a real IPython kernel) with tiny settings, so that
none can rot.

The tiny settings are injected as papermill does: a cell after the one tagged
``parameters`` that assigns the new values. The notebooks check their own results
(the delta re-applied predicts what the run predicted, ...) with asserts, so an execution
that ends without an error has passed those checks too.
"""

from __future__ import annotations

import json
import os
import pathlib

import nbformat
import pytest

from gps_jax import notebook

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / 'notebooks'

# The demo's ViT shrunk (one block of width 32) and its upstream cut to a few steps: the
# same code path in seconds. The keys are those of configs/demo.py.
_TINY_VIT = {'hidden_size': 32, 'num_layers': 1, 'num_heads': 2, 'mlp_dim': 64}
TINY_DEMO = {
  **{f'model.{k}': v for k, v in _TINY_VIT.items()},
  **{f'upstream.model.{k}': v for k, v in _TINY_VIT.items()},
  'upstream.train.steps': 9,  # of 128 images
  'train.eval_every_epochs': 1,
}

# mini-VTAB's tasks on the same tiny backbone (configs/mini_vtab.py builds the demo's).
TINY_MINI_VTAB = {**TINY_DEMO, 'train.eval_every_epochs': 0}

TINY = {
  'quickstart.ipynb': {'EPOCHS': 1, 'COMPARE': ('linear',), 'OVERRIDES': TINY_DEMO},
  'vtab_gpu.ipynb': {
    'CONFIG': 'configs/mini_vtab.py:dsprites_loc',
    'CHECKPOINT': '',
    'DATA_DIR': '',
    'OVERRIDES': {**TINY_MINI_VTAB, 'train.epochs': 1},
  },
  'deltas.ipynb': {'TASKS': ('digits8x8', 'clevr_count'), 'EPOCHS': 1, 'OVERRIDES': TINY_MINI_VTAB},
}

# What each run leaves in its WORKDIR.
WRITES = {
  'quickstart.ipynb': (
    'selection/scores.npz',
    'gps/checkpoint.manifest.json',
    'gps/tensorboard',
    'linear/results.json',
    'report/summary.md',
    'gps_delta.safetensors',
  ),
  'vtab_gpu.ipynb': (
    'checkpoint.manifest.json',
    'report/summary.md',
    'dsprites_loc_gps.safetensors',
  ),
  'deltas.ipynb': (
    'digits8x8/checkpoint.manifest.json',
    'clevr_count.safetensors',
    'clevr_count_dense.npz',
  ),
}


def notebooks() -> list[str]:
  return sorted(p.name for p in NOTEBOOK_DIR.glob('*.ipynb'))


def parameters_cell(nb) -> int:
  tagged = [i for i, c in enumerate(nb.cells) if 'parameters' in c.metadata.get('tags', ())]
  assert len(tagged) == 1, 'a notebook has exactly one cell tagged "parameters"'
  return tagged[0]


def test_every_notebook_has_tiny_settings():
  assert notebooks(), 'notebooks/ has no notebook'
  assert set(TINY) == set(notebooks())


@pytest.mark.parametrize('name', notebooks())
def test_committed_with_the_outputs_of_one_whole_run(name):
  nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
  nbformat.validate(nb)
  parameters_cell(nb)
  code = [c for c in nb.cells if c.cell_type == 'code']
  # Run top to bottom in one kernel: execution counts 1, 2, 3, ...
  assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
  for c in code:
    assert not [o for o in c.outputs if o.output_type == 'error'], c.source[:80]
  images = [o for c in code for o in c.outputs if 'image/png' in o.get('data', {})]
  assert images, f'{name}: no figure in its outputs'
  # No path of the machine that ran it beyond the repository and the user's cache.
  text = json.dumps(nb)
  assert '/tmp/' not in text and 'pytest-of' not in text


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
  """One upstream cache for the module's runs (they share the tiny backbone), never the
  user's."""
  return str(tmp_path_factory.mktemp('cache'))


@pytest.mark.slow
@pytest.mark.parametrize('name', notebooks())
def test_runs_top_to_bottom(name, tmp_path, cache):
  params = {**TINY[name], 'WORKDIR': str(tmp_path / 'work')}
  env = dict(
    os.environ,
    GPS_JAX_CACHE=cache,
    JAX_PLATFORMS='cpu',
    PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get('PYTHONPATH')])]),
  )
  nb = notebook.execute(str(NOTEBOOK_DIR / name), params, env=env)
  outputs = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs]
  assert not [o for o in outputs if o.output_type == 'error']
  assert [o for o in outputs if 'image/png' in o.get('data', {})]
  for path in WRITES[name]:
    assert (tmp_path / 'work' / path).exists(), path


def test_run_notebooks_rejects_an_unknown_notebook(capsys):
  from importlib import util

  spec = util.spec_from_file_location(
    'run_notebooks', str(ROOT / 'tools' / 'run_notebooks.py')
  )
  tool = util.module_from_spec(spec)
  spec.loader.exec_module(tool)
  assert tool.main(['quickstrat']) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "'quickstrat'" in err[0] and 'quickstart' in err[0]
  # The committed parameters are those of each notebook's parameters cell.
  for name, (params, _) in tool.COMMITTED.items():
    with open(NOTEBOOK_DIR / f'{name}.ipynb') as f:
      cells = json.load(f)['cells']
    source = ''.join(next(c for c in cells if 'parameters' in c['metadata'].get('tags', []))['source'])
    assert all(f'\n{key} = ' in '\n' + source for key in params), name
