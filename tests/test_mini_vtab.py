"""Tests of the mini-VTAB suite: generators, shape rendering, splits, sources and
configs/mini_vtab.py."""

import importlib.util
import os

import numpy as np
import pytest

from gps_jax.data import mini_vtab as mv
from gps_jax.data import shapes
from gps_jax.data import sources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION_TEST = os.path.join(sources.DEFAULT_FASHION_MNIST_DIR, 't10k-images-idx3-ubyte.gz')
needs_fashion = pytest.mark.skipif(
  not os.path.exists(FASHION_TEST), reason='Fashion-MNIST (dataset-fashion-mnist) not installed'
)
needs_sklearn = pytest.mark.skipif(
  importlib.util.find_spec('sklearn') is None, reason='scikit-learn not installed'
)
CENTRES = np.arange(shapes.SIZE) + 0.5  # pixel i covers [i, i + 1)
N = 240  # images per generator test


def _config_module():
  spec = importlib.util.spec_from_file_location('mini_vtab_cfg', f'{ROOT}/configs/mini_vtab.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _moments(images):
  """Intensity-weighted centre (x, y) and orientation in [0, pi) (counter-clockwise, y up)."""
  w = images.astype(np.float64)
  yy, xx = np.meshgrid(CENTRES, CENTRES, indexing='ij')
  m = w.sum((1, 2))
  mx, my = (w * xx).sum((1, 2)) / m, (w * yy).sum((1, 2)) / m
  dx, dy = xx - mx[:, None, None], yy - my[:, None, None]
  cxx, cyy, cxy = ((w * a * b).sum((1, 2)) for a, b in ((dx, dx), (dy, dy), (dx, dy)))
  angle = (0.5 * np.arctan2(-2 * cxy, cxx - cyy)) % np.pi  # -: rows grow downwards
  return mx, my, angle


def _far_from_edges(value, edges, margin):
  return np.min(np.abs(np.asarray(value)[:, None] - np.asarray(edges)[None]), axis=1) > margin


def _blobs(image):
  from scipy import ndimage

  labels, count = ndimage.label(image > 0, structure=np.ones((3, 3)))
  centres = ndimage.center_of_mass(image.astype(np.float64), labels, range(1, count + 1))
  return count, np.array(centres)[:, ::-1]  # (x, y)


# ----------------------------------------------------------------------------- generators


def test_dsprites_loc_label_is_the_x_bin_of_the_centre_of_mass():
  images, labels, p = mv.gen_dsprites_loc(N, seed=11)
  assert images.shape == (N, 28, 28) and images.dtype == np.uint8
  np.testing.assert_array_equal(labels, mv.bin_of(p['cx'], mv.loc_edges()))
  mx, my, _ = _moments(images)
  np.testing.assert_allclose(mx, p['cx'], atol=0.15)  # the rendering is where params say
  np.testing.assert_allclose(my, p['cy'], atol=0.15)
  far = _far_from_edges(mx, mv.loc_edges(), 0.2)
  assert far.mean() > 0.7
  np.testing.assert_array_equal(mv.bin_of(mx[far], mv.loc_edges()), labels[far])
  # distractors vary: every shape, sizes and intensities over their ranges
  assert set(p['kind']) == {0, 1, 2}
  assert np.ptp(p['radius']) > 1.5 and np.ptp(p['intensity']) > 0.5 and np.ptp(p['cy']) > 10


def test_dsprites_ori_label_is_the_angle_bin_of_the_principal_axis():
  images, labels, p = mv.gen_dsprites_ori(N, seed=12)
  np.testing.assert_array_equal(labels, mv.bin_of(p['angle'] % np.pi, mv.ori_edges()))
  _, _, angle = _moments(images)
  err = np.abs((angle - p['angle'] + np.pi / 2) % np.pi - np.pi / 2)
  assert np.degrees(err).max() < 2.0
  far = _far_from_edges(angle, mv.ori_edges(), np.radians(2))
  assert far.mean() > 0.7
  np.testing.assert_array_equal(mv.bin_of(angle[far], mv.ori_edges()), labels[far])


def test_clevr_count_label_is_the_number_of_blobs():
  pytest.importorskip('scipy')
  images, labels, p = mv.gen_clevr_count(N, seed=13)
  np.testing.assert_array_equal(labels, (p['kind'] >= 0).sum(1) - 1)
  counts = np.array([_blobs(im)[0] for im in images])
  np.testing.assert_array_equal(counts, labels + 1)
  assert set(labels) == set(range(mv.COUNT_MAX))


def test_clevr_dist_label_is_the_bin_of_the_distance_between_the_blobs():
  pytest.importorskip('scipy')
  images, labels, p = mv.gen_clevr_dist(N, seed=14)
  dist = np.hypot(np.diff(p['cx'], axis=1)[:, 0], np.diff(p['cy'], axis=1)[:, 0])
  np.testing.assert_array_equal(labels, mv.dist_label(dist))
  assert set(labels) == set(range(len(mv.DIST_BINS)))
  measured = []
  for im in images:
    count, centres = _blobs(im)
    assert count == 2
    measured.append(np.hypot(*(centres[0] - centres[1])))
  measured = np.array(measured)
  np.testing.assert_allclose(measured, dist, atol=0.25)
  edges = np.ravel(mv.DIST_BINS)
  far = _far_from_edges(measured, edges, 0.3)
  assert far.mean() > 0.8
  np.testing.assert_array_equal(mv.dist_label(measured[far]), labels[far])


@pytest.mark.parametrize('gen', sorted(mv.GENERATORS))
def test_generators_are_deterministic(gen):
  a = mv.GENERATORS[gen](20, seed=3)
  b = mv.GENERATORS[gen](20, seed=3)
  c = mv.GENERATORS[gen](20, seed=4)
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  assert not np.array_equal(a[0], c[0])


def test_render_anti_aliases_and_shapes_differ():
  sq = shapes.render([dict(kind='square', cx=14, cy=14, radius=4.3, angle=0.3, intensity=1.0)])
  el = shapes.render([dict(kind='ellipse', cx=14, cy=14, radius=4.3, angle=0.3, intensity=1.0)])
  tr = shapes.render([dict(kind='triangle', cx=14, cy=14, radius=4.3, angle=0.3, intensity=1.0)])
  for im in (sq, el, tr):
    assert ((im > 0) & (im < 255)).any() and (im == 255).any()  # edge pixels in between
  # areas: square (2r)^2, disc pi r^2, equilateral triangle of circumradius r
  r = 4.3
  for im, area in ((sq, 4 * r * r), (el, np.pi * r * r), (tr, 3 * np.sqrt(3) / 4 * r * r)):
    assert im.sum() / 255 == pytest.approx(area, rel=0.03)
  half = shapes.render([dict(kind='ellipse', cx=14, cy=14, radius=4.3, angle=0, intensity=0.5)])
  assert half.max() == 128


# ----------------------------------------------------------------------------- splits


@pytest.mark.parametrize('task', sorted(set(mv.GENERATORS) | {'digits8x8'}))
def test_splits(task):
  if task == 'digits8x8':
    pytest.importorskip('sklearn')
  num_classes = mv.TASKS[task][0]
  idx = {s: mv.split_indices(task, s) for s in ('train', 'val', 'test', 'trainval')}
  pool = len(mv.task_pool(task)[0])
  assert len(idx['train']) == 800 and len(idx['val']) == 200
  assert len(idx['test']) == pool - 1000
  assert len(idx['test']) == (797 if task == 'digits8x8' else mv.NUM_TEST)
  assert not set(idx['train']) & set(idx['val'])
  assert not set(idx['test']) & set(idx['trainval'])
  np.testing.assert_array_equal(idx['trainval'], np.concatenate([idx['train'], idx['val']]))
  x, y = sources.load_dataset(task, 'train')
  assert x.shape == (800, 28, 28) and x.dtype == np.uint8 and y.dtype == np.int32
  assert set(y) == set(range(num_classes)) == set(sources.load_dataset(task, 'test')[1])
  assert sources.num_classes(task) == num_classes
  mv.task_pool.cache_clear()  # deterministic across calls: drawn again, the same
  x2, y2 = sources.load_dataset(task, 'train')
  np.testing.assert_array_equal(x, x2)
  np.testing.assert_array_equal(y, y2)
  other, _ = sources.load_dataset(task, 'train', seed=1)
  assert not np.array_equal(x, other)


def test_unknown_task_and_split():
  with pytest.raises(ValueError, match='unknown mini-VTAB task'):
    mv.task_pool('nope')
  with pytest.raises(ValueError, match='unknown split'):
    sources.load_dataset('dsprites_loc', 'train800')


@needs_sklearn
def test_digits8x8_are_sklearns_digits_upsampled():
  from sklearn.datasets import load_digits

  d = load_digits()
  images, labels, _ = mv.task_pool('digits8x8')
  np.testing.assert_array_equal(labels, d.target)
  assert images[:, :2].max() == 0 and images[:, 26:].max() == 0  # the 2 px border
  # ×3 bilinear with half-pixel centres: the middle pixel of each 3×3 block sits on a
  # source pixel, so it is the original (0..16 scaled to 0..255)
  middles = images[:, 3:26:3, 3:26:3]
  np.testing.assert_array_equal(middles, np.round(d.images * 255 / 16).astype(np.uint8))
  assert len(np.unique(images[:, 2:26, 2:26])) > 17  # and interpolated values between


@needs_fashion
def test_fashion_groups_uses_test_images_only_with_the_documented_groups():
  assert len(mv.FASHION_CLASSES) == 10 == len(mv.FASHION_GROUPS)
  documented = {
    'tops': {'T-shirt/top', 'Pullover', 'Coat', 'Shirt'},
    'bottoms+dresses': {'Trouser', 'Dress'},
    'footwear': {'Sandal', 'Sneaker', 'Ankle boot'},
    'bags': {'Bag'},
  }
  for g, name in enumerate(mv.FASHION_GROUP_NAMES):
    got = {c for c, grp in zip(mv.FASHION_CLASSES, mv.FASHION_GROUPS) if grp == g}
    assert got == documented[name]
  images, labels, p = mv.task_pool('fashion_groups')
  test_x, test_y = sources.load_fashion_mnist('test')
  assert len(images) == 3000 and len(set(p['index'].tolist())) == 3000
  assert p['index'].max() < len(test_x)
  np.testing.assert_array_equal(p['fashion_label'], test_y[p['index']])
  np.testing.assert_array_equal(labels, mv.FASHION_GROUPS[test_y[p['index']]])
  for i in range(0, 3000, 150):  # the pasted image is the test image at p['index'], shrunk
    s, x0, y0 = p['size'][i], p['x0'][i], p['y0'][i]
    want = mv._shrink(test_x[p['index'][i]][None].astype(np.float32), int(s))[0]
    np.testing.assert_array_equal(images[i, y0 : y0 + s, x0 : x0 + s], want)
    outside = images[i].copy()
    outside[y0 : y0 + s, x0 : x0 + s] = 0
    assert outside.max() == 0
  train_x, _ = sources.load_fashion_mnist('train')
  train_keys = {im.tobytes() for im in train_x}
  assert not any(test_x[j].tobytes() in train_keys for j in p['index'][:200])


# ----------------------------------------------------------------------------- configs


def test_config_per_task_shares_the_demo_upstream():
  from gps_jax import upstream

  cfg_mod = _config_module()
  assert cfg_mod.TASKS == tuple(mv.TASKS) and set(cfg_mod.DESCRIPTIONS) == set(cfg_mod.TASKS)
  spec = importlib.util.spec_from_file_location('demo_cfg', f'{ROOT}/configs/demo.py')
  demo = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(demo)
  demo_path = upstream.cache_path(demo.get_config().upstream)
  for task in cfg_mod.TASKS:
    c = cfg_mod.get_config(task)
    assert c.data.name == task and c.data.source == 'memory' and c.method == 'gps'
    assert c.gps.k == 1 and c.model.image_size == 28 and c.model.patch_size == 7
    assert upstream.cache_path(c.upstream) == demo_path
    assert c.train.epochs == cfg_mod.EPOCHS and c.train.steps == 0
  tiny = cfg_mod.get_config('dsprites_ori,tiny,scratch')
  assert tiny.upstream is None and tiny.train.steps == cfg_mod.TINY_STEPS
  with pytest.raises(ValueError, match='valid names'):
    cfg_mod.get_config('nope')
  with pytest.raises(ValueError, match='unknown option'):
    cfg_mod.get_config('dsprites_loc,fast')


@pytest.mark.slow
def test_tiny_config_runs_end_to_end(tmp_path):
  from gps_jax import sweep

  c = _config_module().get_config('clevr_dist,tiny,scratch')
  (res,) = sweep.run_config(c, str(tmp_path / 'run'))
  assert res['dataset'] == 'clevr_dist' and res['method'] == 'gps'
  assert res['train_steps'] == 4 and 0.0 <= res['test_accuracy'] <= 1.0
  assert res['splits']['test'] == 'clevr_dist:test'
  assert os.path.exists(tmp_path / 'run' / 'results.json')
