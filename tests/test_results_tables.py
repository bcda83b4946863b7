"""gps_jax.results_table, gps_jax.results_format, the K series of gps_jax.results_report and
gps_jax.paper_results: statistics against NumPy and known values, the tables of a few fake
runs, and the paper's numbers against its tables."""

import os

import numpy as np
import pytest
from repro_env import REPO, _fake_run, _load

from gps_jax import paper_results as pr
from gps_jax import results_format as rf
from gps_jax import results_report
from gps_jax import results_table as rt


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
