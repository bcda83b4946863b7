"""tools/layer_sweep.py: the rows of the per-layer K-entry sweep, its FLOPs facts and its
one-line flag errors. No timing is asserted: these machines are noisy."""

import importlib.util
import json
import pathlib
import sys

import pytest

from gps_jax import sparse_grad

from one_line import assert_one_error_line

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def tool():
  spec = importlib.util.spec_from_file_location(
    'layer_sweep_tool', ROOT / 'tools' / 'layer_sweep.py'
  )
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  return module


def _table_rows(out: str) -> list[list[str]]:
  lines = [line for line in out.splitlines() if line.startswith('| ')]
  return [[c.strip() for c in line.strip('|').split('|')] for line in lines[2:]]


def test_layer_sweep_rows(tool, tmp_path, capsys):
  path = tmp_path / 'layers.json'
  argv = ['--layer-shapes=fc=64x32', '--ks=1,2', '--tokens=16', '--steps=1']
  assert tool.main([*argv, '--rounds=1', f'--json={path}']) == 0
  out = capsys.readouterr().out
  rows = _table_rows(out)
  assert [(row[0], row[1], row[2]) for row in rows] == [('fc', '64→32', '1'), ('fc', '64→32', '2')]
  r = json.loads(path.read_text())
  assert [(c['k'], c['share'], c['tokens']) for c in r['rows']] == [
    (1, 1 / 64, 16),
    (2, 2 / 64, 16),
  ]
  for c in r['rows']:
    assert c['dense_s'] > 0 and c['k_entry_s'] > 0
    # No dense (fan-in, neurons) weight gradient on the K-entry path.
    assert 0 < c['k_entry_flops'] < c['dense_flops']
  assert r['max_k_share'] == sparse_grad.MAX_K_SHARE
  assert 'MAX_K_SHARE' in out


def test_default_shapes_and_tokens_come_from_the_model(tool, capsys):
  """ViT-Ti/16's four kernels; T = --batch x (196 patches + the class token)."""
  argv = ['--model=vit:Ti/16', '--batch=1', '--ks=1', '--steps=1', '--rounds=1']
  assert tool.main(argv) == 0
  out = capsys.readouterr().out
  assert 'tokens T 197' in out
  assert [(r[0], r[1]) for r in _table_rows(out)] == [
    ('mlp fc1', '192→768'),
    ('mlp fc2', '768→192'),
    ('q/k/v', '192→192'),
    ('attn out (3·64)', '192→192'),
  ]


@pytest.mark.parametrize(
  'argv, message',
  [
    (['--layer-shapes=64by32'], "--layer-shapes '64by32'"),
    (['--ks=0'], "--ks '0': want positive integers"),
    (['--model=vit:Q/16'], "--model 'vit:Q/16': vit variants are"),
    (['--tokens=-1'], '--tokens: want 0'),
  ],
)
def test_bad_flags_are_one_error_line(tool, capsys, argv, message):
  assert_one_error_line(tool.main, capsys, argv, message)
