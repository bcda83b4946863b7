"""Tests for gps_jax.data.folders (VTAB-1k / VPT readers) and folder splits in the pipeline."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf  # Imported at collection so no test pays the import.
from PIL import Image

from gps_jax.data.folders import (
  check_num_classes,
  read_vpt_folder,
  read_vtab_folder,
)
from gps_jax.data.input_pipeline import (
  eval_batches,
  recipe_image_fns,
  train_batches,
  two_view_batches,
)
from gps_jax.data.pipeline import preprocess
from gps_jax.data.splits import folder_split

COLOUR = (51, 102, 153)  # / 255 = (0.2, 0.4, 0.6)
HALF = (0.5, 0.5, 0.5)


def save(path, array, fmt):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.asarray(array, np.uint8)).save(path, fmt)


def constant_rgb(h, w, colour=COLOUR):
  return np.broadcast_to(np.asarray(colour, np.uint8), (h, w, 3))


def noise(h, w, seed, gray=False):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (h, w) if gray else (h, w, 3), dtype=np.uint8)


# Six images: (relative path, array, format). Sizes differ; one is grayscale; one
# path contains a space.
IMAGES = [
  ('images/a/0.png', constant_rgb(20, 30), 'PNG'),
  ('images/a/1.jpg', noise(17, 11, 1), 'JPEG'),
  ('images/b/two words.png', noise(8, 8, 2), 'PNG'),
  ('images/b/3.png', np.full((13, 9), 51, np.uint8), 'PNG'),  # grayscale
  ('images/c/4.jpg', noise(40, 25, 4), 'JPEG'),
  ('images/c/5.png', constant_rgb(5, 7, (0, 255, 10)), 'PNG'),
]
LABELS = [0, 1, 2, 3, 1, 0]


def write_images(root):
  for rel, array, fmt in IMAGES:
    save(os.path.join(root, rel), array, fmt)


@pytest.fixture
def vtab_root(tmp_path):
  root = str(tmp_path / 'vtab')
  write_images(root)
  rows = [f'{rel} {label}' for (rel, _, _), label in zip(IMAGES, LABELS)]
  files = {
    'train800.txt': rows[:3],
    'val200.txt': rows[3:4],
    'train800val200.txt': rows[:4],
    'test.txt': ['', *rows[4:], '   ', ''],  # blank lines are skipped
  }
  for name, lines in files.items():
    with open(os.path.join(root, name), 'w') as f:
      f.write('\n'.join(lines) + '\n')
  return root


@pytest.fixture
def vpt_root(tmp_path):
  root = str(tmp_path / 'vpt')
  write_images(os.path.join(root, 'images'))
  pairs = [(rel, label) for (rel, _, _), label in zip(IMAGES, LABELS)]
  for name, part in (('train', pairs[:3]), ('val', pairs[3:4]), ('test', pairs[4:])):
    with open(os.path.join(root, f'{name}.json'), 'w') as f:
      json.dump(dict(part), f)
  return root


def abs_paths(base, rels):
  return [os.path.abspath(os.path.join(base, r)) for r in rels]


# ----------------------------------------------------------------------------- VTAB readers


@pytest.mark.parametrize(
  'split,alias,sl',
  [
    ('train800', 'train', slice(0, 3)),
    ('val200', 'val', slice(3, 4)),
    ('train800val200', 'trainval', slice(0, 4)),
    ('test', None, slice(4, 6)),
  ],
)
def test_vtab_splits_and_aliases(vtab_root, split, alias, sl):
  rels = [rel for rel, _, _ in IMAGES][sl]
  for name in (split, alias) if alias else (split,):
    paths, labels = read_vtab_folder(vtab_root, name, check_files=True)
    assert paths == abs_paths(vtab_root, rels)
    assert all(os.path.isabs(p) and os.path.isfile(p) for p in paths)
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels, LABELS[sl])


def test_vtab_unknown_split(vtab_root):
  with pytest.raises(ValueError, match="unknown VTAB-1k split 'dev'"):
    read_vtab_folder(vtab_root, 'dev')


@pytest.mark.parametrize(
  'bad_line,pattern',
  [
    ('images/a/0.png', 'expected "relative/path label"'),
    ('images/a/0.png abc', "label 'abc' is not an integer"),
    ('images/a/0.png -3', 'negative label -3'),
    ('images/a/0.png 1.5', "label '1.5' is not an integer"),
  ],
)
def test_vtab_bad_line_names_file_and_line(vtab_root, bad_line, pattern):
  ann = os.path.join(vtab_root, 'val200.txt')
  with open(ann, 'w') as f:
    f.write('images/b/3.png 3\n\nimages/a/1.jpg 1\n' + bad_line + '\n')
  with pytest.raises(ValueError) as info:
    read_vtab_folder(vtab_root, 'val')
  message = str(info.value)
  assert message.startswith(f'{ann}:4: ')  # 1-based, blank line counted
  assert pattern in message
  assert repr(bad_line) in message


def test_vtab_missing_annotation_file(vtab_root):
  os.remove(os.path.join(vtab_root, 'test.txt'))
  with pytest.raises(FileNotFoundError) as info:
    read_vtab_folder(vtab_root, 'test')
  assert os.path.join(vtab_root, 'test.txt') in str(info.value)
  assert 'GPS/SSF layout' in str(info.value)
  assert 'train800val200.txt' in str(info.value)


def test_vtab_empty_annotation_file(vtab_root):
  open(os.path.join(vtab_root, 'val200.txt'), 'w').close()
  with pytest.raises(ValueError, match='no examples'):
    read_vtab_folder(vtab_root, 'val200')


def test_vtab_check_files_names_missing_image(vtab_root):
  os.remove(os.path.join(vtab_root, 'images/c/5.png'))
  paths, _ = read_vtab_folder(vtab_root, 'test')  # Not checked by default.
  assert len(paths) == 2
  with pytest.raises(FileNotFoundError) as info:
    read_vtab_folder(vtab_root, 'test', check_files=True)
  message = str(info.value)
  ann = os.path.join(vtab_root, 'test.txt')
  assert message.startswith(f'{ann}:3: ')
  assert os.path.abspath(os.path.join(vtab_root, 'images/c/5.png')) in message


# ----------------------------------------------------------------------------- VPT readers


@pytest.mark.parametrize(
  'split,sl', [('train', slice(0, 3)), ('val', slice(3, 4)), ('test', slice(4, 6))]
)
def test_vpt_splits(vpt_root, split, sl):
  paths, labels = read_vpt_folder(vpt_root, split, image_dir='images', check_files=True)
  assert paths == abs_paths(os.path.join(vpt_root, 'images'), [r for r, _, _ in IMAGES][sl])
  assert labels.dtype == np.int32
  np.testing.assert_array_equal(labels, LABELS[sl])


def test_vpt_trainval_is_train_then_val(vpt_root):
  train = read_vpt_folder(vpt_root, 'train', 'images')
  val = read_vpt_folder(vpt_root, 'val', 'images')
  paths, labels = read_vpt_folder(vpt_root, 'trainval', 'images')
  assert paths == train[0] + val[0]
  np.testing.assert_array_equal(labels, np.concatenate([train[1], val[1]]))


def test_vpt_image_dir_defaults_to_root_and_accepts_absolute(vpt_root):
  paths, _ = read_vpt_folder(vpt_root, 'test')
  assert paths == abs_paths(vpt_root, ['images/c/4.jpg', 'images/c/5.png'])
  absolute = os.path.join(vpt_root, 'images')
  paths, _ = read_vpt_folder(vpt_root, 'test', image_dir=absolute)
  assert paths == abs_paths(absolute, ['images/c/4.jpg', 'images/c/5.png'])


def test_vpt_unknown_split(vpt_root):
  with pytest.raises(ValueError, match="unknown VPT split 'train800'"):
    read_vpt_folder(vpt_root, 'train800')


def test_vpt_malformed_json_names_file_line_and_column(vpt_root):
  ann = os.path.join(vpt_root, 'val.json')
  with open(ann, 'w') as f:
    f.write('{\n  "a.jpg": 1,\n  "b.jpg" 2\n}\n')
  with pytest.raises(ValueError) as info:
    read_vpt_folder(vpt_root, 'trainval')
  message = str(info.value)
  assert message.startswith(f'{ann}: malformed JSON')
  assert 'line 3 column' in message


@pytest.mark.parametrize('value', ['"3"', '1.5', 'true', 'null', '-1'])
def test_vpt_bad_label_names_file_and_key(vpt_root, value):
  ann = os.path.join(vpt_root, 'test.json')
  with open(ann, 'w') as f:
    f.write('{"ok.jpg": 0, "dir/bad one.jpg": ' + value + '}')
  with pytest.raises(ValueError) as info:
    read_vpt_folder(vpt_root, 'test')
  assert str(info.value).startswith(f'{ann}: ')
  assert "'dir/bad one.jpg'" in str(info.value)


def test_vpt_not_an_object_duplicate_key_and_missing_file(vpt_root):
  ann = os.path.join(vpt_root, 'test.json')
  with open(ann, 'w') as f:
    f.write('[["a.jpg", 1]]')
  with pytest.raises(ValueError, match='expected a JSON object'):
    read_vpt_folder(vpt_root, 'test')
  with open(ann, 'w') as f:
    f.write('{"a.jpg": 1, "a.jpg": 2}')
  with pytest.raises(ValueError, match="duplicate key 'a.jpg'"):
    read_vpt_folder(vpt_root, 'test')
  os.remove(os.path.join(vpt_root, 'val.json'))
  with pytest.raises(FileNotFoundError, match='VPT layout') as info:
    read_vpt_folder(vpt_root, 'trainval')
  assert os.path.join(vpt_root, 'val.json') in str(info.value)


def test_vpt_check_files_names_missing_image(vpt_root):
  missing = os.path.join(vpt_root, 'images', 'images/a/1.jpg')
  os.remove(missing)
  with pytest.raises(FileNotFoundError) as info:
    read_vpt_folder(vpt_root, 'train', 'images', check_files=True)
  message = str(info.value)
  assert message.startswith(os.path.join(vpt_root, 'train.json') + ': ')
  assert missing in message and "'images/a/1.jpg'" in message


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


def take(it, k):
  return [next(it) for _ in range(k)]


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
