"""tools/reproduce.py on a real grid (2 tasks × 2 methods × 2 seeds of tests/tiny_suite_config.py,
seconds each): running, skipping finished cells, resuming an interrupted one and the tables
against NumPy; the gps_jax.main commands of --dry-run and the K dimension of --ks (these
need no training)."""

import json
import os
import shlex

import numpy as np
import pytest
from repro_env import CONFIG, GRID, METHODS, SEEDS, TASKS, _csv, _fake_run, reproduce

from gps_jax import results_report
from gps_jax import results_table as rt


def _results(out):
  return {
    (t, m, s): json.loads((out / t / m / f'seed_{s}' / 'results.json').read_text())
    for t in TASKS
    for m in METHODS
    for s in SEEDS
  }


def _check_tables(out, res):
  """results.csv / paired.csv / results.md against NumPy on the runs' results.json."""
  acc = {key: 100 * r['test_accuracy'] for key, r in res.items()}
  rows = {(r['task'], r['method']): r for r in _csv(out / 'results.csv')}
  for t in TASKS:
    for m in METHODS:
      v = np.array([acc[(t, m, s)] for s in SEEDS])
      row = rows[(t, m)]
      assert float(row['test_acc_mean']) == pytest.approx(v.mean(), abs=1e-4)
      assert float(row['test_acc_std']) == pytest.approx(v.std(ddof=1), abs=1e-4)
      assert int(row['trainable_without_head']) == res[(t, m, 1)]['trainable_without_head']
      assert float(row['share_pct']) == pytest.approx(res[(t, m, 1)]['share_pct'], abs=1e-4)
  for m in METHODS:
    per_seed = np.array([np.mean([acc[(t, m, s)] for t in TASKS]) for s in SEEDS])
    row = rows[('mean', m)]
    assert float(row['test_acc_mean']) == pytest.approx(per_seed.mean(), abs=1e-4)
    assert float(row['test_acc_std']) == pytest.approx(per_seed.std(ddof=1), abs=1e-4)
  (paired,) = _csv(out / 'paired.csv')
  d = np.array([acc[(t, 'gps', s)] - acc[(t, 'linear', s)] for t in TASKS for s in SEEDS])
  assert (paired['reference'], paired['method'], int(paired['pairs'])) == ('gps', 'linear', 4)
  assert int(paired['wins']) == (d > 0).sum() and int(paired['losses']) == (d < 0).sum()
  assert int(paired['ties']) == (d == 0).sum()
  half = 3.182446305284263 * d.std(ddof=1) / 2  # t(0.975, df=3) · s / sqrt(4)
  assert float(paired['mean_diff']) == pytest.approx(d.mean(), abs=1e-4)
  assert float(paired['ci95_low']) == pytest.approx(d.mean() - half, abs=1e-4)
  assert float(paired['ci95_high']) == pytest.approx(d.mean() + half, abs=1e-4)
  md = (out / 'results.md').read_text()
  v = np.array([acc[('digits_a', 'gps', s)] for s in SEEDS])
  assert f'| digits_a | {v.mean():.2f} ± {v.std(ddof=1):.2f} |' in md
  assert f'| linear | 4 | {(d > 0).sum()} | {(d == 0).sum()} | {(d < 0).sum()} |' in md


@pytest.mark.slow
def test_grid_runs_skips_finished_resumes_and_tabulates(tmp_path, capsys):
  out, cache = tmp_path / 'grid', str(tmp_path / 'xla')
  args = [*GRID, '--out', str(out), '--compile-cache', cache]
  state = {}
  assert reproduce.main(args, state) == 0
  cells = [(t, m, s) for t in TASKS for m in METHODS for s in SEEDS]
  assert sorted(state['outcome'].ran) == sorted(cells) and not state['outcome'].skipped
  res = _results(out)
  assert all(r['method'] == m for (_, m, _), r in res.items())
  # The two tasks are the two split seeds of the config: different data, as asked.
  assert (
    res[('digits_a', 'gps', 1)]['test_accuracy'] != res[('digits_b', 'gps', 1)]['test_accuracy']
  )
  _check_tables(out, res)
  for name in ('per_task.png', 'accuracy_vs_share.png', 'mask_digits_a_gps_seed_1.png'):
    assert (out / 'plots' / name).stat().st_size > 1000

  # A second invocation runs nothing: every results.json stays as it was.
  mtimes = {
    c: os.stat(out / c[0] / c[1] / f'seed_{c[2]}' / 'results.json').st_mtime_ns for c in cells
  }
  args.append('--no-plots')  # checked above; seconds of matplotlib saved
  state = {}
  assert reproduce.main(args, state) == 0
  assert state['outcome'].ran == [] and sorted(state['outcome'].skipped) == sorted(cells)
  assert mtimes == {
    c: os.stat(out / c[0] / c[1] / f'seed_{c[2]}' / 'results.json').st_mtime_ns for c in cells
  }

  # What a run killed after step 2 of 4 leaves: no results.json, the step-2 checkpoint.
  cell = out / 'digits_b' / 'gps' / 'seed_2'
  (cell / 'results.json').unlink()
  import shutil

  shutil.rmtree(cell / 'train_state' / '4')
  assert (cell / 'train_state' / '2').is_dir()
  capsys.readouterr()
  state = {}
  assert reproduce.main(args, state) == 0
  assert state['outcome'].ran == [('digits_b', 'gps', 2)] and len(state['outcome'].skipped) == 7
  assert 'resuming from the checkpoint of step 2' in capsys.readouterr().out
  again = json.loads((cell / 'results.json').read_text())
  # Resuming continues the same run: same data position, same weights, same accuracy.
  assert again['test_accuracy'] == pytest.approx(
    res[('digits_b', 'gps', 2)]['test_accuracy'], abs=5e-4
  )
  _check_tables(out, _results(out))

  # --dry-run now prints only finished cells; --report-only rebuilds the tables alone.
  (out / 'results.csv').unlink()
  assert reproduce.main([*GRID, '--out', str(out), '--dry-run']) == 0
  printed = capsys.readouterr().out.splitlines()
  assert len(printed) == 8 and all(line.startswith('# finished, skipped: ') for line in printed)
  state = {}
  assert reproduce.main([*GRID, '--out', str(out), '--report-only', '--no-plots'], state) == 0
  assert 'outcome' not in state and (out / 'results.csv').is_file()
  _check_tables(out, _results(out))


def test_dry_run_prints_the_gps_jax_main_commands(tmp_path, capsys):
  from absl import flags
  from ml_collections import config_flags

  out = tmp_path / 'grid'
  args = [*GRID, '--out', str(out), '--dry-run', '--set', 'optim.lr=0.02', '--options', 'k2']
  assert reproduce.main(args) == 0
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 8 and not out.exists()
  first = shlex.split(lines[0])
  assert first[:3] == ['python', '-m', 'gps_jax.main']
  # Paths relative to the current directory, absolute when outside it.
  show = reproduce._display_path
  assert first[3] == f'--config={show(CONFIG)}:digits_a,k2'
  assert first[4] == f'--workdir={show(str(out / "digits_a" / "gps" / "seed_1"))}'
  assert first[5:] == ['--config.method=gps', '--config.seed=1', '--config.optim.lr=0.02']
  assert shlex.split(lines[-1])[5:7] == ['--config.method=linear', '--config.seed=2']
  # The command's config, parsed as gps_jax.main parses it, is the cell's config.
  argv = ['main', first[3], *first[5:]]  # --workdir is main's own flag
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, '', flag_values=fv, sys_argv=argv)
  fv(argv)
  grid = reproduce.make_grid(reproduce.build_parser().parse_args(args))
  mine = reproduce.cell_config(reproduce.task_config(grid, 'digits_a'), 'gps', 1)
  assert fv.config.to_dict() == mine.to_dict()
  assert mine.optim.lr == 0.02 and mine.gps.k == 2


def test_ks_adds_a_k_dimension_for_the_selecting_methods(tmp_path, capsys):
  """--ks runs gps at each K in its own folder (gps_k1, gps_k3) with --config.gps.k, and
  linear (no selection) once; the K points group the folders back by the run's method."""
  out = tmp_path / 'grid'
  args = [*GRID, '--out', str(out), '--dry-run', '--ks', '1,3', '--tasks', 'digits_a']
  assert reproduce.main(args) == 0
  lines = [shlex.split(line) for line in capsys.readouterr().out.splitlines()]
  cells = [(line[4].rsplit('/', 2)[-2], line[5], line[-1]) for line in lines]
  assert cells == [
    ('gps_k1', '--config.method=gps', '--config.gps.k=1'),
    ('gps_k1', '--config.method=gps', '--config.gps.k=1'),
    ('gps_k3', '--config.method=gps', '--config.gps.k=3'),
    ('gps_k3', '--config.method=gps', '--config.gps.k=3'),
    ('linear', '--config.method=linear', '--config.seed=1'),
    ('linear', '--config.method=linear', '--config.seed=2'),
  ]
  for label, k, acc in (('gps_k1', 1, 0.5), ('gps_k3', 3, 0.6), ('random_k3', 3, 0.55)):
    _fake_run(tmp_path / 'k', 'a', label, 0, acc, 1.0)
    d = tmp_path / 'k' / 'a' / label / 'seed_0' / 'results.json'
    r = json.loads(d.read_text())
    r.update(method=label.split('_k')[0], k=k)
    d.write_text(json.dumps(r))
  runs = rt.load_runs(str(tmp_path / 'k'))
  assert {r['method'] for r in runs} == {'gps_k1', 'gps_k3', 'random_k3'}  # table columns
  points = results_report.k_series(runs)
  assert [(p['series'], p['k'], p['mean']) for p in points] == [('a / gps', 1, 50.0), ('a / gps', 3, 60.0)]
  assert reproduce.main([*GRID, '--out', str(out), '--dry-run', '--ks', '0']) == 1
