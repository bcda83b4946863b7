"""read_vpt_folder: the FGVC (VPT) layout of `{relative path: label}` JSON files. Each split
(trainval = train then val) lists the right files and labels under the image folder; malformed
JSON, a bad label, a duplicate key, a missing annotation file and a missing image are errors
that name the file (and key or position)."""

import json
import os

import numpy as np
import pytest
from folder_refs import IMAGES, LABELS, abs_paths, write_images

from gps_jax.data.folders import read_vpt_folder


@pytest.fixture
def vpt_root(tmp_path):
  root = str(tmp_path / 'vpt')
  write_images(os.path.join(root, 'images'))
  pairs = [(rel, label) for (rel, _, _), label in zip(IMAGES, LABELS)]
  for name, part in (('train', pairs[:3]), ('val', pairs[3:4]), ('test', pairs[4:])):
    with open(os.path.join(root, f'{name}.json'), 'w') as f:
      json.dump(dict(part), f)
  return root


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
