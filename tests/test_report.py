"""python -m gps_jax.report: which folders are runs, the per-method points against a hand
computation, the summary's numbers, the PNG sizes, and one-line errors. The report of a
real comparison (the demo's gps and linear runs) is checked in tests/test_cli.py."""

import json
import math

import pytest
from PIL import Image

from gps_jax import errors
from gps_jax import mask_stats
from gps_jax import metrics
from gps_jax import plots
from gps_jax import report
from gps_jax import roles as roles_lib

from tiny import tiny_shapes


def _run(path, method, acc, share, k=None, seed_loss=1.0):
  path.mkdir(parents=True)
  results = {'method': method, 'dataset': 'toy', 'k': k, 'trainable_without_head': 10, 'share_pct': share,
             'share_without_head_pct': share / 2, 'test_accuracy': acc,
             'best_val_accuracy': acc, 'final_val_accuracy': acc, 'selection_seconds': 1.5,
             'train_seconds': 2.0}  # fmt: skip
  (path / 'results.json').write_text(json.dumps(results))
  log = metrics.MetricsLog(str(path))
  for step in (5, 10):
    log.write('train', step, loss=seed_loss / step, accuracy=0.5, lr=1e-3, images_per_s=10.0)
  log.write('eval', 10, val=acc)
  log.write('final', 10, val=acc, test=acc)
  log.close()


def test_find_runs(tmp_path):
  _run(tmp_path / 'one', 'gps', 0.5, 1.0)
  assert report.find_runs(str(tmp_path / 'one')) == [str(tmp_path / 'one')]
  for method in ('gps', 'linear'):
    for seed in (0, 1):
      _run(tmp_path / 'cmp' / method / f'seed_{seed}', method, 0.5, 1.0)
  (tmp_path / 'cmp' / 'report').mkdir()
  got = [
    p.removeprefix(str(tmp_path / 'cmp') + '/') for p in report.find_runs(str(tmp_path / 'cmp'))
  ]
  assert got == ['gps/seed_0', 'gps/seed_1', 'linear/seed_0', 'linear/seed_1']
  with pytest.raises(errors.UserError, match='no results.json'):
    report.find_runs(str(tmp_path / 'cmp' / 'report'))


def test_share_points_are_means_and_stds_over_seeds():
  rows = [
    {'method': 'gps', 'share_pct': 1.0, 'test_accuracy': 0.50},
    {'method': 'gps', 'share_pct': 1.0, 'test_accuracy': 0.54},
    {'method': 'linear', 'share_pct': 0.1, 'test_accuracy': 0.40},
  ]
  points = {p['method']: p for p in report.share_points(rows)}
  assert points['gps']['mean'] == pytest.approx(52.0)
  assert points['gps']['std'] == pytest.approx(math.sqrt(((50 - 52) ** 2 + (54 - 52) ** 2) / 1))
  assert points['linear'] == {'method': 'linear', 'share_pct': 0.1, 'mean': 40.0, 'std': None}


def test_report_of_a_comparison(tmp_path):
  for method, accs, share, k in (('gps', (0.6, 0.7), 1.0, 1), ('linear', (0.4, 0.5), 0.1, None)):
    for seed, acc in enumerate(accs):
      _run(tmp_path / method / f'seed_{seed}', method, acc, share, k, seed_loss=1.0 + seed)
  # A selecting run's mask figure reads its mask_stats.json: the tiny ViT's, K = 1.
  roles = roles_lib.assign_roles(tiny_shapes())
  stats = mask_stats.mask_statistics(roles, 1)
  (tmp_path / 'gps' / 'seed_0' / 'mask_stats.json').write_text(json.dumps(stats))
  written = report.report(str(tmp_path))
  names = sorted(p.rsplit('/', 1)[1] for p in written)
  assert names == ['accuracy_vs_share.png', 'curves.png', 'mask_gps_seed_0.png', 'summary.md']
  size = Image.open(tmp_path / 'report' / 'curves.png').size
  assert size == plots.figure_size_px(plots.CURVES_FIGSIZE)
  summary = (tmp_path / 'report' / 'summary.md').read_text()
  rows = [
    line
    for line in summary.splitlines()
    if line.startswith('| gps/') or line.startswith('| linear/')
  ]
  assert [r.split(' | ')[6] for r in rows] == ['60.00', '70.00', '40.00', '50.00']  # test %
  assert '![Curves](curves.png)' in summary


def test_bad_workdir_is_one_line(tmp_path, capsys):
  assert report.main([str(tmp_path / 'nowhere')]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and 'no such directory' in err[0]
  (tmp_path / 'x').mkdir()
  (tmp_path / 'x' / 'results.json').write_text('{not json')
  assert report.main([str(tmp_path / 'x')]) == 1
  assert 'results.json: cannot read it' in capsys.readouterr().err
