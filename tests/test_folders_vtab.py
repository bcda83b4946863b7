"""read_vtab_folder: the VTAB-1k (GPS/SSF) layout of `relative/path label` text files. Each
split and its alias lists the right files and labels; a bad line, a missing or empty
annotation file and a missing image are errors that name the file (and line)."""

import os

import numpy as np
import pytest
from folder_refs import IMAGES, LABELS, abs_paths, write_vtab_root

from gps_jax.data.folders import read_vtab_folder


@pytest.fixture
def vtab_root(tmp_path):
  return write_vtab_root(str(tmp_path / 'vtab'))


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
