"""tools/reproduce.py's command line: bad input is one error line and exit status 1, --help
lists every option, and --report-only on VTAB workdirs writes the tables with the paper's
numbers beside ours and the plots (no training)."""

import subprocess
import sys

import numpy as np
import pytest
from repro_env import CONFIG, REPO, _csv, _fake_run, reproduce


@pytest.mark.parametrize(
  'args, message',
  [
    (['--tasks', 'digits_c'], "--tasks: unknown task(s) 'digits_c' of suite tiny_suite_config"),
    (['--methods', 'gps,nope'], "--methods: unknown method(s) 'nope'; use gps,"),
    (['--seeds', '1,x'], "--seeds='1,x': give integers"),
    (['--ks', '4,0'], "--ks='4,0': give positive integers"),
    (['--ks', '2.5'], "--ks='2.5': give positive integers"),
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
