"""Tests of gps_jax.data.kvasir: pairs, the seeded split, decoding, and the synthetic set."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from gps_jax.data import kvasir
from gps_jax.errors import UserError


def save(path, array, fmt='PNG', **kwargs):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.asarray(array, np.uint8)).save(path, fmt, **kwargs)


def write_pair(root, stem, image, mask, ext='.png', mask_ext='.png'):
  fmt = {'.png': 'PNG', '.jpg': 'JPEG', '.jpeg': 'JPEG'}
  save(os.path.join(root, 'images', stem + ext), image, fmt[ext.lower()])
  save(os.path.join(root, 'masks', stem + mask_ext), mask, fmt[mask_ext.lower()])


def grey(h, w, value=100):
  return np.full((h, w, 3), value, np.uint8)


def one_line(e):
  message = str(e.value)
  assert '\n' not in message
  return message


@pytest.fixture(scope='module')
def synthetic(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('kvasir') / 'Kvasir-SEG')
  return root, kvasir.write_synthetic(root, 12, seed=5)


# ----------------------------------------------------------------------------- split


STEMS = ['cju%05d' % i for i in range(1000)]


def test_split_sizes_disjoint_and_covering():
  split = kvasir.split_stems(STEMS, seed=0)
  assert [len(split[k]) for k in ('train', 'val', 'test')] == [800, 100, 100]
  sets = [set(split[k]) for k in ('train', 'val', 'test')]
  assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
  assert set.union(*sets) == set(STEMS)
  assert all(split[k] == sorted(split[k]) for k in split)


def test_split_deterministic_order_independent_and_seeded():
  split = kvasir.split_stems(STEMS, seed=3)
  assert kvasir.split_stems(list(STEMS), seed=3) == split
  shuffled = list(np.random.default_rng(9).permutation(STEMS))
  assert kvasir.split_stems(shuffled, seed=3) == split
  assert kvasir.split_stems(STEMS[::-1], seed=3) == split
  assert kvasir.split_stems(STEMS, seed=4)['test'] != split['test']
  # the rule itself: sort, permute with default_rng(seed), cut at 800 and 900
  perm = np.random.default_rng(3).permutation(1000)
  assert split['val'] == sorted(sorted(STEMS)[i] for i in perm[800:900])


def test_split_small_and_bad_fractions():
  split = kvasir.split_stems(['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j'], seed=1)
  assert [len(split[k]) for k in ('train', 'val', 'test')] == [8, 1, 1]
  with pytest.raises(UserError, match='summing to 1'):
    kvasir.split_stems(STEMS, fractions=(0.8, 0.1, 0.2))
  with pytest.raises(UserError, match='duplicates'):
    kvasir.split_stems(['a', 'a', 'b'])


# ----------------------------------------------------------------------------- pairs


def test_list_pairs_extensions_any_case_and_extra_masks_ignored(tmp_path):
  root = str(tmp_path)
  m = np.zeros((4, 4), np.uint8)
  write_pair(root, 'b', grey(4, 4), m, '.JPG', '.png')
  write_pair(root, 'a', grey(4, 4), m, '.jpeg', '.Jpg')
  write_pair(root, 'c', grey(4, 4), m, '.png', '.jpg')
  save(os.path.join(root, 'masks', 'only_mask.png'), m)
  open(os.path.join(root, 'images', 'notes.txt'), 'w').close()
  assert kvasir.list_pairs(root) == ['a', 'b', 'c']


def test_list_pairs_missing_masks_folder_names_it(tmp_path):
  save(str(tmp_path / 'images' / 'x.jpg'), grey(4, 4), 'JPEG')
  with pytest.raises(UserError) as e:
    kvasir.list_pairs(str(tmp_path))
  assert one_line(e).startswith(f'{tmp_path / "masks"}: folder not found')
  assert 'Kvasir-SEG layout' in str(e.value)


def test_list_pairs_image_without_mask_names_the_stems(tmp_path):
  root = str(tmp_path)
  for stem in ('s1', 's2', 's3'):
    write_pair(root, stem, grey(4, 4), np.zeros((4, 4)))
  for stem in ('lost1', 'lost2'):
    save(os.path.join(root, 'images', stem + '.jpg'), grey(4, 4), 'JPEG')
  with pytest.raises(UserError) as e:
    kvasir.list_pairs(root)
  message = one_line(e)
  assert message.startswith(os.path.join(root, 'masks'))
  assert 'no mask for 2 image(s): lost1, lost2' in message


def test_list_pairs_empty_folder(tmp_path):
  os.makedirs(tmp_path / 'images')
  os.makedirs(tmp_path / 'masks')
  with pytest.raises(UserError, match='no image files'):
    kvasir.list_pairs(str(tmp_path))


# ----------------------------------------------------------------------------- load_pair


def test_load_pair_same_size_keeps_values_and_grey_becomes_rgb(tmp_path):
  root = str(tmp_path)
  image = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3) * 5
  mask = np.array([[0, 127, 128, 255]] * 4, np.uint8)  # threshold at 128
  write_pair(root, 'p', image, mask)
  x, y = kvasir.load_pair(root, 'p', 4)
  assert x.dtype == np.float32 and x.shape == (4, 4, 3) and y.dtype == bool
  np.testing.assert_allclose(x, image / 255.0, atol=1e-7)
  np.testing.assert_array_equal(y, [[False, False, True, True]] * 4)
  save(os.path.join(root, 'images', 'g.png'), np.full((4, 4), 51, np.uint8))  # mode L
  save(os.path.join(root, 'masks', 'g.png'), mask)
  x, _ = kvasir.load_pair(root, 'g', 4)
  assert x.shape == (4, 4, 3)
  np.testing.assert_allclose(x, 0.2, atol=1e-7)


def test_load_pair_bilinear_image_nearest_mask(tmp_path):
  root = str(tmp_path)
  a, b = 40, 200
  image = np.zeros((2, 2, 3), np.uint8)
  image[:, 0], image[:, 1] = a, b
  write_pair(root, 'up', image, np.array([[255, 0], [0, 255]], np.uint8))
  x, y = kvasir.load_pair(root, 'up', 4)
  # bilinear 2 -> 4: output centres at input x = -0.25, 0.25, 0.75, 1.25 (edge-clamped)
  row = np.array([a, 0.75 * a + 0.25 * b, 0.25 * a + 0.75 * b, b]) / 255
  np.testing.assert_allclose(x, np.broadcast_to(row[None, :, None], (4, 4, 3)), atol=0.6 / 255)
  np.testing.assert_array_equal(y, np.kron([[1, 0], [0, 1]], np.ones((2, 2))).astype(bool))
  blocks = np.kron([[1, 0], [1, 1]], np.full((3, 3), 255)).astype(np.uint8)  # 6x6 -> 2x2
  write_pair(root, 'down', grey(6, 6), blocks)
  np.testing.assert_array_equal(kvasir.load_pair(root, 'down', 2)[1], [[True, False], [True, True]])


def test_load_pair_thresholds_jpeg_mask_grey_edges(tmp_path):
  root = str(tmp_path)
  truth = np.zeros((24, 24), bool)
  truth[5:17, 7:19] = True
  write_pair(root, 'j', grey(24, 24), truth * 255, '.jpg', '.jpg')
  decoded = np.asarray(Image.open(os.path.join(root, 'masks', 'j.jpg')).convert('L'))
  assert ((decoded > 0) & (decoded < 255)).any()  # JPEG did add grey values
  assert ((decoded > 0) != truth).any()  # so a naive "> 0" would be wrong
  np.testing.assert_array_equal(kvasir.load_pair(root, 'j', 24)[1], truth)


@pytest.mark.parametrize('damage', ['garbage', 'truncated'])
def test_corrupt_file_is_a_user_error_naming_it(tmp_path, damage):
  root = str(tmp_path)
  write_pair(root, 'ok', grey(32, 32), np.zeros((32, 32)), '.jpg', '.jpg')
  path = os.path.join(root, 'images', 'ok.jpg')
  data = open(path, 'rb').read()
  with open(path, 'wb') as f:
    f.write(b'not a jpeg at all' if damage == 'garbage' else data[: len(data) // 2])
  with pytest.raises(UserError) as e:
    kvasir.load_pair(root, 'ok', 8)
  assert one_line(e).startswith(f'{path}: cannot read image file')


def test_mask_of_another_size_is_a_user_error(tmp_path):
  write_pair(str(tmp_path), 'm', grey(8, 10), np.zeros((8, 8)))
  with pytest.raises(UserError, match='mask is 8x8 but its image .* is 10x8'):
    kvasir.load_pair(str(tmp_path), 'm', 8)


def test_load_split_matches_split_and_load_pair(synthetic):
  root, stems = synthetic
  xs, ys, names = kvasir.load_split(root, 'val', 32, seed=2)
  assert names == kvasir.split_stems(stems, seed=2)['val'] and len(names) == 1
  assert xs.shape == (1, 32, 32, 3) and xs.dtype == np.float32 and ys.dtype == bool
  x, y = kvasir.load_pair(root, names[0], 32)
  np.testing.assert_array_equal(xs[0], x)
  np.testing.assert_array_equal(ys[0], y)
  with pytest.raises(UserError, match="unknown Kvasir-SEG split 'dev'"):
    kvasir.load_split(root, 'dev', 32)


# ----------------------------------------------------------------------------- synthetic


def test_blob_mask_disc_and_harmonics():
  yy, xx = np.meshgrid(np.arange(20) + 0.5, np.arange(30) + 0.5, indexing='ij')
  disc = kvasir.blob_mask((20, 30), (9.3, 14.1), 6.2, np.zeros((3, 2)))
  np.testing.assert_array_equal(disc, (yy - 9.3) ** 2 + (xx - 14.1) ** 2 <= 6.2**2)
  # r(theta) = 10 (1 + 0.25 cos 2 theta): 12.5 along x, 7.5 along y
  blob = kvasir.blob_mask((41, 41), (20.5, 20.5), 10.0, [(0.0, 0.0), (0.25, 0.0)])
  assert blob[20, 20 + 12] and not blob[20, 20 + 13]  # pixel centre 12 / 13 px right
  assert blob[20 + 7, 20] and not blob[20 + 8, 20]
  assert blob[20, 20 - 12] and not blob[20 - 8, 20]
  rows = blob[20, 20:]  # star-shaped: every ray from the centre is one run
  assert rows[: rows.sum()].all()


def test_write_synthetic_layout_and_determinism(synthetic, tmp_path):
  root, stems = synthetic
  assert stems == ['cju0%04d' % i for i in range(12)]
  assert kvasir.list_pairs(root) == stems
  again = kvasir.write_synthetic(str(tmp_path / 'again'), 12, seed=5)
  other = kvasir.write_synthetic(str(tmp_path / 'other'), 12, seed=6)
  assert again == other == stems
  for folder in ('images', 'masks'):
    for stem in stems:
      data = open(os.path.join(root, folder, stem + '.jpg'), 'rb').read()
      assert data == open(tmp_path / 'again' / folder / (stem + '.jpg'), 'rb').read()
      assert data != open(tmp_path / 'other' / folder / (stem + '.jpg'), 'rb').read()
  assert Image.open(io.BytesIO(data)).format == 'JPEG'


def test_synthetic_masks_are_the_blobs(synthetic):
  root, stems = synthetic
  for i, stem in enumerate(stems):
    image = np.asarray(Image.open(os.path.join(root, 'images', stem + '.jpg')))
    decoded = np.asarray(Image.open(os.path.join(root, 'masks', stem + '.jpg')).convert('L'))
    assert image.shape == (96, 128, 3) and decoded.shape == (96, 128)
    mask = decoded >= 128
    assert 0.03 <= mask.mean() <= 0.60
    _, _, blobs = kvasir.synthetic_example(5, i)
    assert len(blobs) in (1, 2)
    truth = np.logical_or.reduce([kvasir.blob_mask((96, 128), **b) for b in blobs])
    padded = np.pad(truth, 1, mode='edge')
    ring = np.zeros_like(truth)  # pixels with a 4-neighbour of the other class
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
      ring |= padded[dy : dy + 96, dx : dx + 128] != truth
    wrong = mask != truth
    assert not (wrong & ~ring).any()
    assert wrong.sum() <= 0.02 * ring.sum()


def best_single_channel_dice(image, mask):
  """The best Dice of ``channel > t`` or ``channel < t`` over channels and thresholds."""
  best = 0.0
  for c in range(3):
    v = image[..., c].ravel()
    pos = np.bincount(v[mask.ravel()], minlength=256)
    neg = np.bincount(v[~mask.ravel()], minlength=256)
    for tp, fp in (
      (np.cumsum(pos[::-1])[::-1], np.cumsum(neg[::-1])[::-1]),  # v >= t
      (np.cumsum(pos), np.cumsum(neg)),  # v <= t
    ):
      best = max(best, float((2 * tp / (mask.sum() + tp + fp)).max()))
  return best


def test_synthetic_polyps_are_visible_but_not_colour_separable(synthetic):
  root, stems = synthetic
  for stem in stems[:6]:
    image = np.asarray(Image.open(os.path.join(root, 'images', stem + '.jpg')))
    mask = np.asarray(Image.open(os.path.join(root, 'masks', stem + '.jpg')).convert('L')) >= 128
    inside, outside = image[mask].mean(0), image[~mask].mean(0)
    assert np.linalg.norm(inside - outside) > 3.0  # the polyp's colour differs on average
    assert best_single_channel_dice(image, mask) < 0.95  # but no colour threshold finds it
