"""tools/benchmark.py on a tiny ViT: the facts of its method table (ratios to full, GPS's
optimizer state, K-entry FLOPs, eval FLOPs), the rows of its per-layer sweep and its
one-line flag errors. No timing is asserted: these machines are noisy."""

import importlib.util
import json
import math
import pathlib
import sys

import pytest

from gps_jax import sparse_grad

from one_line import assert_one_error_line

ROOT = pathlib.Path(__file__).resolve().parents[1]
METHODS = ('full', 'gps', 'gps_kentry', 'gps_autodiff', 'gps_dense', 'linear', 'bitfit', 'lora')
# Fan-ins with K=1 <= MAX_K_SHARE * fan-in (auto's rule), but not the 8x8x3 patch embedding's.
WIDTH = 64 * math.ceil(1 / (64 * sparse_grad.MAX_K_SHARE))
TINY = [
  '--model=vit:Ti/8', '--image-size=32', '--classes=10',
  f'--model-override=hidden_size={WIDTH}', f'--model-override=mlp_dim={2 * WIDTH}',
  '--model-override=num_layers=1', '--model-override=num_heads=2',
]  # fmt: skip


@pytest.fixture(scope='module')
def tool():
  spec = importlib.util.spec_from_file_location('benchmark_tool', ROOT / 'tools' / 'benchmark.py')
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # its dataclasses look their module up there
  spec.loader.exec_module(module)
  return module


def _table_rows(out: str) -> list[list[str]]:
  """The cells of the markdown table's body rows (after the header and alignment rows)."""
  lines = [line for line in out.splitlines() if line.startswith('| ')]
  return [[c.strip() for c in line.strip('|').split('|')] for line in lines[2:]]


@pytest.mark.slow
def test_method_table_facts(tool, tmp_path, capsys):
  path = tmp_path / 'out.json'
  argv = [*TINY, '--steps=1', '--rounds=1', '--batch=8', '--k=1', f'--methods={",".join(METHODS)}']
  assert tool.main([*argv, f'--json={path}']) == 0
  out = capsys.readouterr().out
  r = json.loads(path.read_text())
  assert list(r) == list(METHODS)
  for key in ('flops_ratio', 'memory_ratio', 'wall_ratio', 'opt_state_ratio', 'eval_flops_ratio'):
    assert r['full'][key] == 1.0, key
  for name, row in r.items():
    m = row['memory']
    assert row['memory_bytes'] == m['argument'] + m['temp'] + m['output'] - m['alias'] > 0, name
    assert row['flops'] > 0 and row['wall_s'] > 0, name
  assert r['gps']['opt_state_ratio'] < 0.1
  assert r['gps_dense']['opt_state_ratio'] > 0.9
  assert r['linear']['flops'] < r['full']['flops']
  # K=1: 'on' takes the K-entry path for every kernel, 'off' for none, 'auto' (gps) for all
  # but the patch embedding (fan-in 192 < 1 / MAX_K_SHARE); dropping the dense weight
  # gradients shows in XLA's FLOPs.
  selected = r['gps']['selected_kernels']
  assert selected == r['gps_kentry']['selected_kernels'] == r['gps_autodiff']['selected_kernels']
  assert r['gps_kentry']['k_entry_kernels'] == selected > 1
  assert r['gps']['k_entry_kernels'] == selected - 1
  assert r['gps_autodiff']['k_entry_kernels'] == 0
  assert r['gps_kentry']['flops'] < r['gps']['flops'] < r['gps_autodiff']['flops']
  # After merging, every method here evaluates the plain backbone.
  assert r['gps']['eval_flops'] == r['full']['eval_flops']
  assert r['lora']['eval_flops'] == r['full']['eval_flops']
  select = r['gps']['select']
  assert select['images_per_s'] > 0
  assert select['flops'] > r['full']['flops']  # two views per image
  assert [row[0] for row in _table_rows(out)] == list(METHODS)
  assert 'jax ' in out.splitlines()[0] and 'K 1' in out.splitlines()[0]
  assert 'Selection pass' in out and ': equal.' in out
  assert 'Analytic matmul FLOPs per image' in out  # a ViT: the analytic split too
  assert '1.00×' in out and 'random inputs per neuron' in out


@pytest.mark.parametrize(
  'argv, message',
  [
    (['--methods=full,gsp'], "--methods: unknown 'gsp'"),
    (['--model=vit:Q/16'], "--model 'vit:Q/16': vit variants are"),
    (['--model=resnet50'], "--model 'resnet50': use a backbone"),
    (['--model=vit:Ti/16', '--model-override=widht=3'], "unknown ViT config keys ['widht']"),
    (['--train=nope=1'], "--train 'nope=1': use KEY=VALUE"),
    (['--train=base_dtype=float16'], "--train: config.train.base_dtype='float16'"),
  ],
)
def test_bad_flags_are_one_error_line(tool, capsys, argv, message):
  assert_one_error_line(tool.main, capsys, argv, message)


def test_train_overrides_reach_every_method(tool, tmp_path):
  """--train base_dtype=bfloat16: the frozen base is half the step's arguments, the
  trainable state and its optimizer state are unchanged."""
  rows = {}
  for dtype in ('float32', 'bfloat16'):
    path = tmp_path / f'{dtype}.json'
    argv = [*TINY, '--steps=1', '--rounds=1', '--batch=4', '--methods=full,gps']
    assert tool.main([*argv, f'--train=base_dtype={dtype}', f'--json={path}']) == 0
    rows[dtype] = json.loads(path.read_text())['gps']
  f32, bf16 = rows['float32'], rows['bfloat16']
  assert bf16['opt_state_bytes'] == f32['opt_state_bytes']
  assert bf16['memory']['argument'] < f32['memory']['argument']
