"""The GPS paper's published numbers, as data (Zhang et al., CVPR 2024).

Every number below is typed in from the paper's text (``shared/reference/gps_paper.txt``
in this project's workspace; it is not part of the repository, so the numbers live here):

* ``TABLE2`` — Table 2, FGVC with ViT-B/16 (ImageNet-21k): top-1 accuracy (%) per
  data set, the mean over the five, and the trainable parameters (%).
* ``TABLE3`` — Table 3, VTAB-1k with ViT-B/16 (ImageNet-21k): top-1 accuracy (%) per
  task, the mean over the 19 tasks, and the mean trainable parameters (%).
* ``TABLE4`` — Table 4, the FGVC mean (%) and trainable parameters (%) per backbone;
  the ViT-B/16 row is Table 2's mean and parameters (the paper's Table 4 lists only
  Swin-B and ConvNeXt-B; it refers to Table 2 for ViT-B/16).
* ``TABLE6`` — Table 6, ablations on FGVC with ViT-B/16, each the mean of three seeds:
  (a) selection level, (b) selection criterion, (c) the gradient's loss. Only GPS has
  its standard deviation (``TABLE6_GPS_STD``).

**Protocol.** The paper (its code, FightingFighting/GPS) reports the *best test
accuracy over the epochs*: the epoch is chosen on the test set. gps_jax reports the
test accuracy *after the last epoch*, with nothing chosen on test, so the paper's
numbers are an upper bound of what the same run gives under our protocol.

**Keys.** Methods are keyed by their gps_jax method name where one exists (``gps``,
``full``, ``linear``, ``bitfit`` for the paper's "Bias", ``adapter``, ``lora``,
``vpt_shallow``, ``vpt_deep``, ``ssf``); the others keep the paper's name
(``SPT-Adapter``, ``SPT-LoRA``). Tasks are keyed by gps_jax names: VTAB-1k tasks as
``gps_jax.data.vtab.TASKS`` (in that order in ``VTAB_TASKS``), FGVC data sets as
``configs/fgvc.py``'s ``RECIPES``. The paper's columns come in another order
(``VTAB_PAPER_COLUMNS``, ``FGVC_PAPER_COLUMNS``, ``TABLE6_PAPER_COLUMNS``); the
rows below are typed in the paper's order and mapped to names once, here.

**A caveat on one row.** Table 3's SPT-Adapter row, as printed, has its structured
values in an order that does not look like SPT's own paper (dSprites/loc 51.9,
SmallNORB/ele 61.4); its 19 values do average to the printed mean 73.03, so it is
kept exactly as printed.
"""

from __future__ import annotations

PROTOCOL_NOTE = (
  'paper: best test accuracy over epochs (chosen on test); '
  'ours: test accuracy after the last epoch (nothing chosen on test)'
)

# ---------------------------------------------------------------------------- tasks

# gps_jax.data.vtab.TASKS order (checked by tests/test_results_tables.py).
VTAB_TASKS = (
  'caltech101',
  'cifar100',
  'dtd',
  'oxford_flowers102',
  'oxford_iiit_pet',
  'svhn',
  'sun397',
  'patch_camelyon',
  'eurosat',
  'resisc45',
  'diabetic_retinopathy',
  'clevr_count',
  'clevr_distance',
  'dmlab',
  'kitti_distance',
  'dsprites_location',
  'dsprites_orientation',
  'smallnorb_azimuth',
  'smallnorb_elevation',
)
# Table 3's columns, left to right: CIFAR-100, Caltech101, DTD, Flowers102, Pets, SVHN,
# Sun397 | Patch Camelyon, EuroSAT, Resisc45, Retinopathy | Clevr/count,
# Clevr/distance, DMLab, KITTI/distance, dSprites/loc, dSprites/ori, SmallNORB/azi,
# SmallNORB/ele. Note CIFAR-100 comes before Caltech101 (VTAB_TASKS has them swapped).
VTAB_PAPER_COLUMNS = ('cifar100', 'caltech101') + VTAB_TASKS[2:]
VTAB_GROUPS = {
  'natural': VTAB_PAPER_COLUMNS[:7],
  'specialized': VTAB_PAPER_COLUMNS[7:11],
  'structured': VTAB_PAPER_COLUMNS[11:],
}
# Table 2's columns: CUB-2011, NA-Birds, Oxford Flowers, Stan. Dogs, Stan. Cars.
FGVC_PAPER_COLUMNS = ('cub', 'nabirds', 'oxford_flowers', 'stanford_dogs', 'stanford_cars')
FGVC_TASKS = FGVC_PAPER_COLUMNS
# Table 6's columns: CUB, NABirds, Flowers, Cars, Dogs (Cars before Dogs, unlike Table 2).
TABLE6_PAPER_COLUMNS = ('cub', 'nabirds', 'oxford_flowers', 'stanford_cars', 'stanford_dogs')

# The paper's row names -> our keys.
PAPER_METHOD_NAMES = {
  'Full': 'full',
  'Linear': 'linear',
  'Bias': 'bitfit',
  'Adapter': 'adapter',
  'LoRA': 'lora',
  'VPT-Shallow': 'vpt_shallow',
  'VPT-Deep': 'vpt_deep',
  'SSF': 'ssf',
  'SPT-Adapter': 'SPT-Adapter',
  'SPT-LoRA': 'SPT-LoRA',
  'GPS (Ours)': 'gps',
}

# ---------------------------------------------------------------------------- Table 2

# method: (CUB, NABirds, Flowers, Dogs, Cars, mean, params %) — Table 2's column order.
_TABLE2_ROWS = {
  'full': (87.3, 82.7, 98.8, 89.4, 84.5, 88.54, 100.00),
  'linear': (85.3, 75.9, 97.9, 86.2, 51.3, 79.32, 0.21),
  'bitfit': (88.4, 84.2, 98.8, 91.2, 79.4, 88.40, 0.33),
  'adapter': (87.1, 84.3, 98.5, 89.8, 68.6, 85.66, 0.48),
  'lora': (85.6, 79.8, 98.9, 87.6, 72.0, 84.78, 0.90),
  'vpt_shallow': (86.7, 78.8, 98.4, 90.7, 68.7, 84.62, 0.29),
  'vpt_deep': (88.5, 84.2, 99.0, 90.2, 83.6, 89.11, 0.99),
  'ssf': (89.5, 85.7, 99.6, 89.6, 89.2, 90.72, 0.45),
  'SPT-Adapter': (89.1, 83.3, 99.2, 91.1, 86.2, 89.78, 0.47),
  'SPT-LoRA': (88.6, 83.4, 99.5, 91.4, 87.3, 90.04, 0.60),
  'gps': (89.9, 86.7, 99.7, 92.2, 90.4, 91.78, 0.77),
}

# ---------------------------------------------------------------------------- Table 3

# method: (19 tasks in VTAB_PAPER_COLUMNS order, mean, params %).
_TABLE3_ROWS = {
  'full': (
    68.9, 87.7, 64.3, 97.2, 86.9, 87.4, 38.8,
    79.7, 95.7, 84.2, 73.9,
    56.3, 58.6, 41.7, 65.5, 57.5, 46.7, 25.7, 29.1,
    65.57, 100.00,
  ),
  'linear': (
    63.4, 85.0, 64.3, 97.0, 86.3, 36.6, 51.0,
    78.5, 87.5, 68.6, 74.0,
    34.3, 30.6, 33.2, 55.4, 12.5, 20.0, 9.6, 19.2,
    53.00, 0.05,
  ),
  'bitfit': (
    72.8, 87.0, 59.2, 97.5, 85.3, 59.9, 51.4,
    78.7, 91.6, 72.9, 69.8,
    61.5, 55.6, 32.4, 55.9, 66.6, 40.0, 15.7, 25.1,
    62.05, 0.16,
  ),
  'adapter': (
    74.1, 86.1, 63.2, 97.7, 87.0, 34.6, 50.8,
    76.3, 88.0, 73.1, 70.5,
    45.7, 37.4, 31.2, 53.2, 30.3, 25.4, 13.8, 22.1,
    55.82, 0.31,
  ),
  'lora': (
    68.1, 91.4, 69.8, 99.0, 90.5, 86.4, 53.1,
    85.1, 95.8, 84.7, 74.2,
    83.0, 66.9, 50.4, 81.4, 80.2, 46.6, 32.2, 41.1,
    72.63, 0.90,
  ),
  'vpt_shallow': (
    77.7, 86.9, 62.6, 97.5, 87.3, 74.5, 51.2,
    78.2, 92.0, 75.6, 72.9,
    50.5, 58.6, 40.5, 67.1, 68.7, 36.1, 20.2, 34.1,
    64.85, 0.13,
  ),
  'vpt_deep': (
    78.8, 90.8, 65.8, 98.0, 88.3, 78.1, 49.6,
    81.8, 96.1, 83.4, 68.4,
    68.5, 60.0, 46.5, 72.8, 73.6, 47.9, 32.9, 37.8,
    69.43, 0.70,
  ),
  'ssf': (
    69.0, 92.6, 75.1, 99.4, 91.8, 90.2, 52.9,
    87.4, 95.9, 87.4, 75.5,
    75.9, 62.3, 53.3, 80.6, 77.3, 54.9, 29.5, 37.9,
    73.10, 0.28,
  ),
  'SPT-Adapter': (
    72.9, 93.2, 72.5, 99.3, 91.4, 88.8, 55.8,
    86.2, 96.1, 85.5, 75.5,
    83.0, 68.0, 51.9, 81.2, 51.9, 31.7, 41.2, 61.4,
    73.03, 0.44,
  ),
  'SPT-LoRA': (
    73.5, 93.3, 72.5, 99.3, 91.5, 87.9, 55.5,
    85.7, 96.2, 85.9, 75.9,
    84.4, 67.6, 52.5, 82.0, 81.0, 51.1, 30.2, 41.3,
    74.07, 0.63,
  ),
  'gps': (
    81.1, 94.2, 75.8, 99.4, 91.7, 91.6, 52.4,
    87.9, 96.2, 86.5, 76.5,
    79.9, 62.6, 55.0, 82.4, 84.0, 55.4, 29.7, 46.1,
    75.18, 0.25,
  ),
}  # fmt: skip

# ---------------------------------------------------------------------------- Table 4

# backbone: {method: (FGVC mean accuracy %, params %)}.
_TABLE4_ROWS = {
  'swin_b': {
    'full': (92.42, 100.00),
    'linear': (87.90, 0.28),
    'ssf': (91.54, 0.56),
    'gps': (92.56, 0.95),
  },
  'convnext_b': {
    'full': (93.04, 100.00),
    'linear': (88.00, 0.28),
    'ssf': (92.48, 0.56),
    'gps': (93.32, 0.90),
  },
}

# ---------------------------------------------------------------------------- Table 6

# part: {variant: (CUB, NABirds, Flowers, Cars, Dogs)} in TABLE6_PAPER_COLUMNS order.
# The GPS row belongs to every part: it is the neuron level, the gradient criterion and
# the SupCon gradient at once.
_TABLE6_GPS = (88.07, 86.64, 99.69, 90.10, 92.30)
_TABLE6_GPS_STD = (0.11, 0.03, 0.01, 0.10, 0.10)
_TABLE6_ROWS = {
  'level': {
    'net': (86.86, 86.55, 99.62, 89.65, 91.32),
    'layer': (87.30, 86.79, 99.64, 90.03, 91.90),
    'neuron': _TABLE6_GPS,
  },
  'criterion': {
    'net_random': (86.60, 85.98, 99.61, 89.10, 91.34),
    'neuron_random': (87.17, 86.02, 99.62, 89.52, 91.82),
    'magnitude': (87.29, 85.99, 99.62, 89.29, 91.30),
    'gradient': _TABLE6_GPS,
  },
  'gradient_source': {
    'head_ce': (87.05, 86.20, 99.64, 89.25, 91.29),
    'supcon': _TABLE6_GPS,
  },
}
# Table 6 variants that are a gps_jax method of their own.
TABLE6_METHODS = {'random': ('criterion', 'neuron_random'), 'magnitude': ('criterion', 'magnitude')}

# ---------------------------------------------------------------------------- as dicts


def _row(columns, values) -> dict:
  return dict(zip(columns, values, strict=True))


def _with_summary(columns, values) -> dict:
  row = _row(columns, values[: len(columns)])
  row['mean'], row['params_pct'] = values[len(columns)], values[len(columns) + 1]
  return row


# TABLE2[method] = {'cub': .., 'nabirds': .., 'oxford_flowers': .., 'stanford_dogs': ..,
#                   'stanford_cars': .., 'mean': .., 'params_pct': ..}
TABLE2: dict[str, dict[str, float]] = {
  m: _with_summary(FGVC_PAPER_COLUMNS, v) for m, v in _TABLE2_ROWS.items()
}
# TABLE3[method] = {<VTAB task>: .., 'mean': .., 'params_pct': ..}
TABLE3: dict[str, dict[str, float]] = {
  m: _with_summary(VTAB_PAPER_COLUMNS, v) for m, v in _TABLE3_ROWS.items()
}
# TABLE4[backbone][method] = {'mean': .., 'params_pct': ..}; vit_b16 from Table 2.
TABLE4: dict[str, dict[str, dict[str, float]]] = {
  'vit_b16': {
    m: {'mean': r['mean'], 'params_pct': r['params_pct']}
    for m, r in TABLE2.items()
    if m in ('full', 'linear', 'ssf', 'gps')
  },
  **{
    b: {m: {'mean': a, 'params_pct': p} for m, (a, p) in rows.items()}
    for b, rows in _TABLE4_ROWS.items()
  },
}
# TABLE6[part][variant] = {<FGVC data set>: ..}; TABLE6_GPS_STD the GPS row's std.
TABLE6: dict[str, dict[str, dict[str, float]]] = {
  part: {name: _row(TABLE6_PAPER_COLUMNS, v) for name, v in rows.items()}
  for part, rows in _TABLE6_ROWS.items()
}
TABLE6_GPS_STD: dict[str, float] = _row(TABLE6_PAPER_COLUMNS, _TABLE6_GPS_STD)

BENCHMARKS = ('vtab', 'fgvc')


def paper_value(benchmark: str, method: str, task: str, backbone: str = 'vit_b16'):
  """The paper's accuracy (%) of `method` on `task` ('mean' for the benchmark mean), or None.

  benchmark 'vtab': Table 3. 'fgvc': Table 2 for ViT-B/16, Table 6 (3-seed means) for the
  ablation methods `random` and `magnitude`, Table 4 (the mean only) for swin_b /
  convnext_b. None where the paper has no such number.
  """
  if benchmark == 'vtab' and backbone == 'vit_b16':
    return TABLE3.get(method, {}).get(task)
  if benchmark != 'fgvc':
    return None
  if backbone != 'vit_b16':
    return TABLE4.get(backbone, {}).get(method, {}).get(task) if task == 'mean' else None
  if method in TABLE2:
    return TABLE2[method].get(task)
  if method in TABLE6_METHODS:
    part, name = TABLE6_METHODS[method]
    return TABLE6[part][name].get(task)
  return None


def paper_params_pct(benchmark: str, method: str, backbone: str = 'vit_b16'):
  """The paper's trainable parameters (%) of `method` on the benchmark, or None."""
  if benchmark == 'vtab' and backbone == 'vit_b16':
    return TABLE3.get(method, {}).get('params_pct')
  if benchmark == 'fgvc':
    return TABLE4.get(backbone, {}).get(method, {}).get('params_pct') or (
      TABLE2.get(method, {}).get('params_pct') if backbone == 'vit_b16' else None
    )
  return None


def source(benchmark: str, method: str, backbone: str = 'vit_b16') -> str | None:
  """Which table `paper_value` reads for `method` ('Table 3', ...), or None."""
  if benchmark == 'vtab' and backbone == 'vit_b16' and method in TABLE3:
    return 'Table 3'
  if benchmark == 'fgvc':
    if backbone != 'vit_b16':
      return 'Table 4' if method in TABLE4.get(backbone, {}) else None
    if method in TABLE2:
      return 'Table 2'
    if method in TABLE6_METHODS:
      return 'Table 6'
  return None
