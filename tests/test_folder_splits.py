"""Folder splits in the input pipeline: folder_split holds paths, not pixels, with labels
checked against the class count; eval and train batches decode the files (every file once,
padded, for evaluation; normalised like the in-memory pipeline; deterministic per seed for
training); a batch larger than the split, an undecodable or a missing image is an error."""

import os

import numpy as np
import pytest
import tensorflow as tf  # Imported at collection so no test pays the import.
from folder_refs import COLOUR, IMAGES, LABELS, abs_paths, constant_rgb, write_vtab_root
from PIL import Image
from pipeline_refs import take

from gps_jax.data.folders import check_num_classes, read_vtab_folder
from gps_jax.data.input_pipeline import (
  eval_batches,
  recipe_image_fns,
  train_batches,
  two_view_batches,
)
from gps_jax.data.pipeline import preprocess
from gps_jax.data.splits import folder_split

HALF = (0.5, 0.5, 0.5)


@pytest.fixture
def vtab_root(tmp_path):
  return write_vtab_root(str(tmp_path / 'vtab'))


# ----------------------------------------------------------------------------- labels


def test_check_num_classes():
  check_num_classes([0, 4, 2], 5, 'train.json')
  with pytest.raises(ValueError, match=r'test\.json: label 5 at index 1 is outside \[0, 5\)'):
    check_num_classes([1, 5, 2, 7], 5, 'test.json')


# ----------------------------------------------------------------------------- folder splits


def _split(paths, labels):
  return folder_split('folder', list(paths), labels, 4)


def _eval(paths, labels, batch_size, image_size, mean=HALF, std=HALF, recipe='resize'):
  _, eval_fn = recipe_image_fns(recipe, image_size, mean, std)
  split = _split(paths, labels)
  return eval_batches(split, batch_size=batch_size, image_fn=eval_fn, image_size=image_size)


def _train(paths, labels, batch_size, image_size, seed, recipe='resize'):
  train_fn, _ = recipe_image_fns(recipe, image_size, HALF, HALF)
  split = _split(paths, labels)
  return train_batches(split, batch_size=batch_size, image_fn=train_fn, seed=seed)


def test_folder_split_holds_paths_not_pixels(vtab_root):
  paths, labels = read_vtab_folder(vtab_root, 'trainval')
  split = _split(paths, labels)
  assert split.num_examples == 4 and split.num_classes == 4
  examples = list(split.dataset.as_numpy_iterator())
  assert [e['image'].decode() for e in examples] == paths
  assert [int(e['label']) for e in examples] == LABELS[:4]
  image = split.decode(tf.constant(paths[0])).numpy()
  np.testing.assert_array_equal(image, constant_rgb(20, 30))
  gray = split.decode(tf.constant(paths[3])).numpy()  # grayscale PNG -> 3 equal channels
  np.testing.assert_array_equal(gray, np.full((13, 9, 3), 51, np.uint8))
  assert split.find_bad_example() is None
  with pytest.raises(ValueError, match=r'label 3 at index 3 is outside \[0, 3\)'):
    folder_split('folder', paths, labels, 3)
  with pytest.raises(ValueError):  # 4 paths, 2 labels
    folder_split('folder', paths, labels[:2], 4)


def test_eval_batches_cover_every_file_once_in_order_with_mask(vtab_root):
  paths, labels = read_vtab_folder(vtab_root, 'trainval')
  paths, labels = paths + paths[:1], np.append(labels, labels[0])  # 5 examples
  batches = list(_eval(paths, labels, batch_size=2, image_size=16))
  assert len(batches) == 3
  for b in batches:
    assert set(b) == {'image', 'label', 'mask'}
    assert b['image'].shape == (2, 16, 16, 3) and b['image'].dtype == np.float32
    assert b['label'].shape == (2,) and b['label'].dtype == np.int32
    assert b['mask'].dtype == np.bool_
  mask = np.concatenate([b['mask'] for b in batches])
  np.testing.assert_array_equal(mask, [True] * 5 + [False])
  got = np.concatenate([b['label'] for b in batches])[mask]
  np.testing.assert_array_equal(got, labels)
  images = np.concatenate([b['image'] for b in batches])
  np.testing.assert_array_equal(images[4], images[0])  # The same file twice, same pixels.
  np.testing.assert_array_equal(images[5], 0.0)  # Padding is a zero image.
  assert not np.array_equal(images[0], images[1])
  assert np.all(np.abs(images) <= 1.0 + 1e-6)


def test_constant_colour_and_grayscale_normalisation(vtab_root):
  paths, labels = read_vtab_folder(vtab_root, 'trainval')
  (batch,) = _eval([paths[0], paths[3]], labels[[0, 3]], batch_size=2, image_size=12)
  # (c / 255 - 0.5) / 0.5 with c = (51, 102, 153) -> (0.2, 0.4, 0.6) -> (-0.6, -0.2, 0.2).
  want = np.broadcast_to(np.float32([-0.6, -0.2, 0.2]), (12, 12, 3))
  np.testing.assert_allclose(batch['image'][0], want, atol=1e-6)
  np.testing.assert_allclose(batch['image'][1], np.full((12, 12, 3), -0.6), atol=1e-6)  # gray 51
  mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
  (batch,) = _eval(paths[:1], labels[:1], batch_size=1, image_size=20, mean=mean, std=std)
  # ((0.2, 0.4, 0.6) - mean) / std = (0.2, 0.8, 0.15).
  np.testing.assert_allclose(
    batch['image'][0], np.broadcast_to([0.2, 0.8, 0.15], (20, 20, 3)), atol=1e-6
  )


def test_matches_pipeline_preprocess_of_decoded_pixels(vtab_root):
  paths, labels = read_vtab_folder(vtab_root, 'trainval')
  (batch,) = _eval(paths, labels, batch_size=4, image_size=24)
  for i, path in enumerate(paths):
    want = preprocess(np.asarray(Image.open(path).convert('RGB')), 24, HALF, HALF).numpy()
    if path.endswith('.png'):  # Lossless: identical pixels, identical result.
      np.testing.assert_allclose(batch['image'][i], want, atol=1e-6, err_msg=path)
    else:  # libjpeg builds differ in chroma upsampling; only a few levels apart.
      assert np.mean(np.abs(batch['image'][i] - want)) < 4 * 2 / 255, path


def test_fgvc_recipe_batches_files_of_different_sizes(vtab_root):
  paths = abs_paths(vtab_root, [rel for rel, _, _ in IMAGES])
  labels = np.asarray(LABELS, np.int32)
  (batch,) = _eval(paths, labels, batch_size=6, image_size=8, recipe='fgvc')
  assert batch['image'].shape == (6, 8, 8, 3) and batch['mask'].all()
  # Constant files stay constant through resize + centre crop: (0, 255, 10) -> (-1, 1, -0.92).
  want = (np.array([0, 255, 10]) / 255 - 0.5) / 0.5
  np.testing.assert_allclose(batch['image'][5], np.broadcast_to(want, (8, 8, 3)), atol=1e-5)
  batch = next(_train(paths, labels, batch_size=6, image_size=8, seed=0, recipe='fgvc'))
  assert batch['image'].shape == (6, 8, 8, 3) and np.isfinite(batch['image']).all()
  np.testing.assert_array_equal(np.sort(batch['label']), np.sort(labels))


def test_training_is_deterministic_per_seed_and_drops_remainder(vtab_root):
  paths, labels = read_vtab_folder(vtab_root, 'trainval')
  paths, labels = paths + read_vtab_folder(vtab_root, 'test')[0], np.arange(6, dtype=np.int32)
  split = folder_split('folder', paths, labels, 6)
  train_fn, _ = recipe_image_fns('resize', 8, HALF, HALF)
  run = lambda seed: take(train_batches(split, batch_size=4, image_fn=train_fn, seed=seed), 6)
  a, b, c = run(3), run(3), run(4)  # 6 epochs of one batch each (2 files left out per epoch)
  for x in a:
    assert set(x) == {'image', 'label'}
    assert x['image'].shape == (4, 8, 8, 3) and x['label'].dtype == np.int32
    assert len(set(x['label'].tolist())) == 4  # A permutation slice: no repeats.
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x['label'], y['label'])
    np.testing.assert_array_equal(x['image'], y['image'])
  orders = [tuple(x['label']) for x in a]
  assert len(set(orders)) > 1  # Each epoch reshuffles.
  assert orders != [tuple(x['label']) for x in c]
  # The images follow their labels: file 0 is the constant colour, file 5 (0, 255, 10).
  for x in a:
    for row, label in zip(x['image'], x['label']):
      if label in (0, 5):
        colour = COLOUR if label == 0 else (0, 255, 10)
        want = (np.array(colour) / 255 - 0.5) / 0.5
        np.testing.assert_allclose(row, np.broadcast_to(want, (8, 8, 3)), atol=1e-5)


def test_batch_size_larger_than_the_split(vtab_root):
  paths, labels = read_vtab_folder(vtab_root, 'train')  # 3 files
  with pytest.raises(ValueError, match='batch size 4 is larger than the split'):
    _train(paths, labels, batch_size=4, image_size=8, seed=0)
  with pytest.raises(ValueError, match='selection batch size 4 is larger than the split'):
    two_view_batches(_split(paths, labels), batch_size=4, image_size=8, mean=HALF, std=HALF, seed=0)
  (batch,) = _eval(paths, labels, batch_size=4, image_size=8)  # Evaluation pads instead.
  np.testing.assert_array_equal(batch['mask'], [True, True, True, False])


def test_corrupt_image_error_names_the_path(vtab_root):
  paths, labels = read_vtab_folder(vtab_root, 'trainval')
  bad = os.path.join(vtab_root, 'images', 'corrupt.jpg')
  with open(bad, 'wb') as f:
    f.write(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
  paths = paths + [bad]
  labels = np.append(labels, 0)
  it = _eval(paths, labels, batch_size=2, image_size=8)
  assert next(it)['image'].shape == (2, 8, 8, 3)  # Batches before the bad file still come.
  assert next(it)['mask'].all()
  with pytest.raises(ValueError) as info:
    next(it)
  assert str(info.value).startswith(f'{bad}: cannot decode image file')
  it = _train(paths, labels, batch_size=5, image_size=8, seed=0)  # Every epoch holds it.
  with pytest.raises(ValueError) as info:
    next(it)
  assert str(info.value).startswith(bad)


def test_missing_image_error_names_the_path(vtab_root):
  paths, labels = read_vtab_folder(vtab_root, 'test')
  os.remove(paths[1])
  it = _eval(paths, labels, batch_size=2, image_size=8)
  with pytest.raises(FileNotFoundError) as info:
    next(it)
  assert str(info.value).startswith(paths[1])
  it = _train(paths, labels, batch_size=2, image_size=8, seed=1)
  with pytest.raises(FileNotFoundError) as info:
    next(it)
  assert str(info.value).startswith(paths[1])
