"""tools/reproduce.py, gps_jax.results_table, gps_jax.results_format and gps_jax.paper_results.

One real grid (2 tasks × 2 methods × 2 seeds of tests/tiny_suite_config.py, seconds each)
checks running, skipping finished cells, resuming an interrupted one and the tables
against NumPy; the other tests need no training.
"""

import csv
import importlib.util
import json
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest

from gps_jax import paper_results as pr
from gps_jax import results_format as rf
from gps_jax import results_report
from gps_jax import results_table as rt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'tiny_suite_config.py')


def _load(name, path):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module  # dataclasses look their module up there
  spec.loader.exec_module(module)
  return module


reproduce = _load('reproduce_tool', os.path.join(REPO, 'tools', 'reproduce.py'))
GRID = ['--config-file', CONFIG, '--methods', 'gps,linear', '--seeds', '1,2']
TASKS, METHODS, SEEDS = ('digits_a', 'digits_b'), ('gps', 'linear'), (1, 2)


def _results(out):
  return {
    (t, m, s): json.loads((out / t / m / f'seed_{s}' / 'results.json').read_text())
    for t in TASKS
    for m in METHODS
    for s in SEEDS
  }


def _csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


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


@pytest.mark.parametrize(
  'args, message',
  [
    (['--tasks', 'digits_c'], "--tasks: unknown task(s) 'digits_c' of suite tiny_suite_config"),
    (['--methods', 'gps,nope'], "--methods: unknown method(s) 'nope'; use gps,"),
    (['--seeds', '1,x'], "--seeds='1,x': give integers"),
    (['--set', 'optim.learning_rate=1'], '--config.optim.learning_rate: no such key'),
    (['--set', 'optim.lr'], "override 'optim.lr': write KEY=VALUE"),
    (['--set', 'method=full'], "override 'method=full': method is set per cell by the grid"),
    (['--set', 'train.steps=abc'], 'flag --config.train.steps=abc: invalid literal for int()'),
    (['--options', 'bogus'], "tiny_suite_config.py:digits_a,bogus: unknown option(s) ['bogus']"),
  ],
)
def test_bad_input_is_one_error_line(tmp_path, capsys, args, message):
  assert reproduce.main(['--config-file', CONFIG, '--out', str(tmp_path), *args]) == 1
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and err.startswith('error: ') and message in err, err
  assert not list(tmp_path.iterdir())  # nothing ran, nothing written


def test_bad_suite_exits_non_zero_from_the_command_line(tmp_path):
  proc = subprocess.run(
    [sys.executable, 'tools/reproduce.py', '--suite=nope', f'--out={tmp_path}'],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert proc.returncode == 1
  assert proc.stderr == "error: --suite='nope': use one of mini_vtab, vtab, fgvc, cifar100\n"


def test_help_lists_every_option(capsys):
  with pytest.raises(SystemExit) as e:
    reproduce.main(['--help'])
  assert e.value.code == 0
  out = capsys.readouterr().out
  for option in ('--suite', '--config-file', '--report-only', '--dry-run', '--compile-cache'):
    assert option in out


def _fake_run(out, task, method, seed, acc, share, k=None, stats=None):
  d = out / task / method / f'seed_{seed}'
  d.mkdir(parents=True)
  (d / 'results.json').write_text(
    json.dumps(
      {
        'method': method,
        'test_accuracy': acc,
        'trainable': 100,
        'trainable_without_head': 60,
        'share_pct': share,
        'share_without_head_pct': share / 2,
        'k': k,
        'history': [1, 2, 3],
      }
    )
  )
  if stats is not None:
    (d / 'mask_stats.json').write_text(json.dumps(stats))


def test_report_only_on_vtab_shows_the_paper_beside_ours(tmp_path, capsys):
  out = tmp_path / 'vtab'
  stats = {
    'k': 1,
    'leaves': {
      'embedding/kernel': {'role': 'select', 'params': 100, 'trainable': 2},
      'head/kernel': {'role': 'train', 'params': 10, 'trainable': 10},
    },
  }
  accs = {('cifar100', 'gps'): (0.80, 0.82), ('cifar100', 'full'): (0.70, 0.71)}
  accs |= {('caltech101', 'gps'): (0.90, 0.93), ('caltech101', 'full'): (0.90, 0.85)}
  for (t, m), pair in accs.items():
    for seed, a in zip((42, 43), pair):
      _fake_run(
        out, t, m, seed, a, 0.2 if m == 'gps' else 100.0, stats=stats if m == 'gps' else None
      )
  state = {}
  assert reproduce.main(['--suite=vtab', f'--out={out}', '--report-only'], state) == 0
  md = (out / 'results.md').read_text()
  assert 'best test accuracy over epochs, chosen on test' in md and 'Table 3' in md
  # Rows in gps_jax.data.vtab.TASKS order (caltech101 first), the paper's number beside ours.
  assert md.index('| caltech101 |') < md.index('| cifar100 |')
  assert '| cifar100 | 81.00 ± 1.41 [81.10] | 70.50 ± 0.71 [68.90] |' in md
  assert '| caltech101 | 91.50 ± 2.12 [94.20] | 87.50 ± 3.54 [87.70] |' in md
  # The mean row: per seed the mean of the two tasks (85, 87.5) for gps, then over seeds;
  # beside it the paper's numbers of the same two tasks averaged (its printed 75.18 is
  # over all 19), marked as derived.
  assert f'| **mean** | 86.25 ± {np.std([85, 87.5], ddof=1):.2f} [87.65*] |' in md
  assert "[x*]: the mean of the paper's numbers over these 2 tasks" in md
  rows = {(r['task'], r['method']): r for r in _csv(out / 'results.csv')}
  assert float(rows[('cifar100', 'gps')]['paper_acc']) == 81.1
  assert float(rows[('mean', 'full')]['paper_acc']) == 78.3  # (87.7 + 68.9) / 2
  for name in ('per_task.png', 'accuracy_vs_share.png', 'mask_caltech101_gps_seed_42.png'):
    assert (out / 'plots' / name).stat().st_size > 1000
  assert {'caltech101', 'cifar100'} == {t for t, _ in state['summary'].cells}


def test_paper_mean_is_the_printed_one_when_every_task_ran():
  vtab = rf.Paper('vtab')
  assert vtab.mean('gps', pr.VTAB_TASKS) == (75.18, False)
  assert vtab.mean('gps', ['cifar100', 'dtd']) == (round((81.1 + 75.8) / 2, 2), True)
  assert vtab.mean('random', ['cifar100']) == (None, True)
  fgvc = rf.Paper('fgvc', 'swin_b')
  assert fgvc.mean('gps', pr.FGVC_TASKS) == (92.56, False)  # Table 4
  assert fgvc.mean('gps', ['cub']) == (None, True)  # Table 4 has no per-data-set numbers


def test_one_seed_has_no_std_and_an_incomplete_method_no_mean(tmp_path):
  _fake_run(tmp_path, 'a', 'gps', 0, 0.5, 1.0)
  _fake_run(tmp_path, 'b', 'gps', 0, 0.7, 1.0)
  _fake_run(tmp_path, 'a', 'linear', 0, 0.4, 0.5)
  s = rt.summarize(rt.load_runs(str(tmp_path)), methods=['gps', 'linear'])
  md = rf.format_markdown(s)
  assert '| a | 50.00 ± – | 40.00 ± – |' in md and '| b | 70.00 ± – | – |' in md
  assert '| **mean** | 60.00 ± – | incomplete |' in md
  (p,) = s.paired
  assert (p.n, p.wins, p.interval) == (1, 1, None)
  assert '| linear | 1 | 1 | 0 | 0 | +10.00 | – |' in md


def test_accuracy_vs_k_is_drawn_when_a_method_ran_with_several_k(tmp_path):
  runs = [
    {'task': 't', 'method': 'gps', 'k': k, 'test_accuracy': a}
    for k, a in ((1, 0.5), (1, 0.6), (2, 0.7), (4, 0.65))
  ] + [{'task': 't', 'method': 'linear', 'k': None, 'test_accuracy': 0.3}]
  points = results_report.k_series(runs)
  assert [(p['k'], round(p['mean'], 6)) for p in points] == [(1, 55.0), (2, 70.0), (4, 65.0)]
  assert points[0]['std'] == pytest.approx(np.std([50, 60], ddof=1)) and points[1]['std'] is None


@pytest.mark.parametrize(
  'p, df, want',
  [
    (0.975, 1, 12.706204736),
    (0.975, 2, 4.302652730),
    (0.975, 3, 3.182446305),
    (0.975, 10, 2.228138852),
    (0.975, 30, 2.042272456),
    (0.95, 5, 2.015048373),
    (0.025, 4, -2.776445105),
  ],
)
def test_t_quantile_known_values(p, df, want):
  assert rt.t_quantile(p, df) == pytest.approx(want, abs=1e-8)


def test_t_interval_covers_at_the_nominal_rate():
  rng = np.random.default_rng(0)
  hits = 0
  for _ in range(2000):
    lo, hi = rt.t_interval(rng.normal(1.0, 2.0, size=5))
    hits += lo <= 1.0 <= hi
  assert 0.93 < hits / 2000 < 0.97


# ----------------------------------------------------------------------------- the paper


def test_paper_vtab_tasks_are_gps_jax_tasks_and_columns_map_by_name():
  from gps_jax.data import vtab

  assert pr.VTAB_TASKS == tuple(vtab.TASKS)
  assert sorted(pr.VTAB_PAPER_COLUMNS) == sorted(vtab.TASKS)
  # Spot checks against the paper's Table 3 (its first column is CIFAR-100, then Caltech101).
  assert pr.TABLE3['gps']['cifar100'] == 81.1 and pr.TABLE3['gps']['caltech101'] == 94.2
  assert pr.TABLE3['full']['sun397'] == 38.8 and pr.TABLE3['full']['patch_camelyon'] == 79.7
  assert pr.TABLE3['gps']['kitti_distance'] == 82.4
  assert pr.TABLE3['lora']['dsprites_orientation'] == 46.6
  assert pr.TABLE3['gps']['smallnorb_elevation'] == 46.1
  assert pr.TABLE3['bitfit']['svhn'] == 59.9 and pr.TABLE3['linear']['dsprites_location'] == 12.5
  assert (pr.TABLE3['gps']['mean'], pr.TABLE3['gps']['params_pct']) == (75.18, 0.25)


def test_paper_means_are_the_means_of_their_rows():
  for m, row in pr.TABLE3.items():  # VTAB-1k: the mean of the 19 tasks
    assert np.mean([row[t] for t in pr.VTAB_TASKS]) == pytest.approx(row['mean'], abs=0.006), m
  for m, row in pr.TABLE2.items():  # FGVC: of the 5 (VPT's rows are rounded differently)
    assert np.mean([row[t] for t in pr.FGVC_TASKS]) == pytest.approx(row['mean'], abs=0.05), m


def test_paper_fgvc_columns_and_tables_4_and_6():
  fgvc = _load('fgvc_config', os.path.join(REPO, 'configs', 'fgvc.py'))
  assert set(pr.FGVC_TASKS) == set(fgvc.RECIPES) == set(pr.TABLE6_PAPER_COLUMNS)
  assert pr.TABLE2['gps']['stanford_dogs'] == 92.2 and pr.TABLE2['gps']['stanford_cars'] == 90.4
  assert pr.TABLE2['bitfit']['cub'] == 88.4 and pr.TABLE2['linear']['stanford_cars'] == 51.3
  # Table 6 lists Cars before Dogs.
  assert pr.TABLE6['criterion']['magnitude']['stanford_cars'] == 89.29
  assert pr.TABLE6['criterion']['magnitude']['stanford_dogs'] == 91.30
  assert pr.TABLE6_GPS_STD['cub'] == 0.11 and pr.TABLE6['level']['neuron']['cub'] == 88.07
  assert pr.TABLE4['swin_b']['gps'] == {'mean': 92.56, 'params_pct': 0.95}
  assert pr.TABLE4['convnext_b']['ssf']['mean'] == 92.48
  assert pr.TABLE4['vit_b16']['gps']['mean'] == 91.78
  assert pr.paper_value('fgvc', 'random', 'nabirds') == 86.02  # Table 6, Neuron Random
  assert pr.paper_value('fgvc', 'gps', 'mean', 'convnext_b') == 93.32
  assert pr.paper_value('fgvc', 'gps', 'cub', 'convnext_b') is None
  assert pr.paper_value('vtab', 'random', 'dtd') is None
  assert pr.source('fgvc', 'magnitude') == 'Table 6' and pr.source('vtab', 'gps') == 'Table 3'


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


def test_k_mean_series_averages_the_tasks_per_seed_then_the_seeds():
  runs = [
    {'task': t, 'method': f'gps_k{k}', 'run_method': 'gps', 'k': k, 'seed': s, 'test_accuracy': a}
    for t, k, s, a in (
      ('a', 1, 0, 0.5), ('b', 1, 0, 0.7), ('a', 1, 1, 0.6), ('b', 1, 1, 0.8),
      ('a', 4, 0, 0.9), ('b', 4, 0, 0.9), ('a', 4, 1, 0.8),  # seed 1 lacks task b at K=4
    )
  ]  # fmt: skip
  points = {p['k']: p for p in results_report.k_mean_series(runs)}
  assert points[1]['series'] == 'gps (mean of 2 tasks)'
  assert points[1]['mean'] == pytest.approx(65.0)  # seeds: 60, 70
  assert points[1]['std'] == pytest.approx(np.std([60, 70], ddof=1))
  assert points[4]['mean'] == pytest.approx(90.0) and points[4]['std'] is None
