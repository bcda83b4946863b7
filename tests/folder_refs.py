"""Image files and the VTAB-1k annotation layout shared by the folder tests
(tests/test_folders_vtab.py, test_folders_vpt.py, test_folder_splits.py; tests/ is on sys.path
under pytest; no tests here)."""

import os

import numpy as np
from PIL import Image

COLOUR = (51, 102, 153)  # / 255 = (0.2, 0.4, 0.6)


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


def write_vtab_root(root):
  """IMAGES under `root` with the four VTAB-1k annotation files; returns `root`."""
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


def abs_paths(base, rels):
  return [os.path.abspath(os.path.join(base, r)) for r in rels]
