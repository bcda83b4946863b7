"""Readers for the image-folder layouts used by the original GPS / VPT / SSF code.

Two layouts are supported; both readers return ``(paths, labels)`` where
``paths`` is a list of absolute file paths and ``labels`` an int32 array. No
image is decoded here (see :func:`gps_jax.data.splits.folder_split`).

* VTAB-1k, GPS/SSF layout: ``root`` holds the annotation files
  ``train800val200.txt``, ``train800.txt``, ``val200.txt`` and ``test.txt``,
  one ``relative/path label`` per line (split on the last whitespace, so paths
  may contain spaces; blank lines are skipped).
* FGVC, VPT layout: ``root`` holds ``train.json``, ``val.json`` and
  ``test.json``, each a JSON object ``{relative image path: integer label}``.
  Training in the original uses train + val (``'trainval'`` here).

The readers import no TensorFlow; :func:`gps_jax.data.splits.folder_split` turns
their output into a split for the input pipeline.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

VTAB_SPLITS = ('train800val200', 'train800', 'val200', 'test')
VTAB_ALIASES = {'trainval': 'train800val200', 'train': 'train800', 'val': 'val200'}
VPT_SPLITS = ('train', 'val', 'test', 'trainval')

_INT = re.compile(r'[+-]?\d+')
_VTAB_LAYOUT = (
  'a VTAB-1k folder in the GPS/SSF layout: train800val200.txt, train800.txt, val200.txt '
  'and test.txt in the dataset root, one "relative/path label" per line'
)
_VPT_LAYOUT = (
  'an FGVC folder in the VPT layout: train.json, val.json and test.json in the dataset '
  'root, each a JSON object {relative image path: integer label}'
)


# ----------------------------------------------------------------------------- VTAB-1k


def vtab_split_name(split: str) -> str:
  """Canonical VTAB-1k split name ('trainval' -> 'train800val200', ...)."""
  name = VTAB_ALIASES.get(split, split)
  if name not in VTAB_SPLITS:
    valid = ', '.join(repr(s) for s in (*VTAB_SPLITS, *VTAB_ALIASES))
    raise ValueError(f'unknown VTAB-1k split {split!r}; expected one of {valid}')
  return name


def read_vtab_folder(
  root: str, split: str, *, check_files: bool = False
) -> tuple[list[str], np.ndarray]:
  """Reads one split of a VTAB-1k folder (GPS/SSF layout).

  Args:
    root: dataset folder holding ``<split>.txt``; image paths are relative to it.
    split: 'train800val200', 'train800', 'val200' or 'test', or the aliases
      'trainval', 'train', 'val'.
    check_files: also verify that every image file exists.

  Returns:
    (absolute image paths in file order, int32 labels).

  Raises:
    FileNotFoundError: the annotation file (or, with ``check_files``, an image)
      is missing.
    ValueError: unknown split, a line without a label or with a non-integer or
      negative label (message: ``file:line: ...``), or an empty split.
  """
  ann = os.path.join(root, f'{vtab_split_name(split)}.txt')
  if not os.path.isfile(ann):
    raise FileNotFoundError(f'{ann} not found; expected {_VTAB_LAYOUT}')
  paths, labels, lines = [], [], []
  with open(ann, encoding='utf-8') as f:
    for lineno, raw in enumerate(f, start=1):
      line = raw.strip()
      if not line:
        continue
      parts = line.rsplit(None, 1)
      if len(parts) != 2:
        raise ValueError(f'{ann}:{lineno}: expected "relative/path label", got {line!r}')
      rel, text = parts
      if not _INT.fullmatch(text):
        raise ValueError(f'{ann}:{lineno}: label {text!r} is not an integer in {line!r}')
      label = int(text)
      if label < 0:
        raise ValueError(f'{ann}:{lineno}: negative label {label} in {line!r}')
      paths.append(os.path.abspath(os.path.join(root, rel)))
      labels.append(label)
      lines.append(lineno)
  if not paths:
    raise ValueError(f'{ann}: no examples (the file is empty)')
  if check_files:
    for path, lineno in zip(paths, lines):
      if not os.path.isfile(path):
        raise FileNotFoundError(f'{ann}:{lineno}: image file {path} does not exist')
  return paths, np.asarray(labels, np.int32)


# ----------------------------------------------------------------------------- VPT (FGVC)


def _no_duplicate_keys(ann: str):
  def hook(pairs):
    seen = set()
    for key, _ in pairs:
      if key in seen:
        raise ValueError(f'{ann}: duplicate key {key!r}')
      seen.add(key)
    return dict(pairs)

  return hook


def _read_vpt_json(ann: str) -> dict:
  if not os.path.isfile(ann):
    raise FileNotFoundError(f'{ann} not found; expected {_VPT_LAYOUT}')
  with open(ann, encoding='utf-8') as f:
    text = f.read()
  try:
    data = json.loads(text, object_pairs_hook=_no_duplicate_keys(ann))
  except json.JSONDecodeError as e:  # Message carries "line L column C (char N)".
    raise ValueError(f'{ann}: malformed JSON: {e}') from e
  if not isinstance(data, dict):
    raise ValueError(f'{ann}: expected a JSON object {{path: label}}, got {type(data).__name__}')
  if not data:
    raise ValueError(f'{ann}: no examples (empty JSON object)')
  return data


def read_vpt_folder(
  root: str, split: str, image_dir: str | None = None, *, check_files: bool = False
) -> tuple[list[str], np.ndarray]:
  """Reads one split of an FGVC folder in the VPT layout.

  Args:
    root: dataset folder holding ``train.json``, ``val.json``, ``test.json``.
    split: 'train', 'val', 'test' or 'trainval' (train then val, in file order;
      what the original trains on).
    image_dir: folder the JSON keys are relative to; default ``root``. A
      relative ``image_dir`` is taken relative to ``root`` (so CUB, whose VPT
      images live in ``root/images``, passes ``image_dir='images'``).
    check_files: also verify that every image file exists.

  Returns:
    (absolute image paths, int32 labels). Labels are kept as written (VPT's
    are 0-based); they are not remapped to contiguous ids.

  Raises:
    FileNotFoundError: a JSON file (or, with ``check_files``, an image) is missing.
    ValueError: unknown split, malformed JSON (with its line and column), a
      duplicate key, a label that is not a non-negative integer, or an empty file.
  """
  if split not in VPT_SPLITS:
    raise ValueError(f'unknown VPT split {split!r}; expected one of {", ".join(VPT_SPLITS)}')
  base = root if image_dir is None else os.path.join(root, image_dir)
  paths, labels = [], []
  for part in ('train', 'val') if split == 'trainval' else (split,):
    ann = os.path.join(root, f'{part}.json')
    for key, label in _read_vpt_json(ann).items():
      if isinstance(label, bool) or not isinstance(label, int):
        raise ValueError(f'{ann}: label {label!r} of key {key!r} is not an integer')
      if label < 0:
        raise ValueError(f'{ann}: negative label {label} of key {key!r}')
      path = os.path.abspath(os.path.join(base, key))
      if check_files and not os.path.isfile(path):
        raise FileNotFoundError(f'{ann}: image file {path} (key {key!r}) does not exist')
      paths.append(path)
      labels.append(label)
  return paths, np.asarray(labels, np.int32)


# ----------------------------------------------------------------------------- labels


def check_num_classes(labels, num_classes: int, source: str) -> None:
  """Raises ValueError when a label of ``source`` is outside [0, num_classes).

  ``source`` names the split or file in the message (e.g. ``'test.json'``),
  typically used to check that the test split fits the head built from train.
  """
  labels = np.asarray(labels)
  bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
  if bad.size:
    i = int(bad[0])
    raise ValueError(
      f'{source}: label {int(labels[i])} at index {i} is outside [0, {num_classes}) '
      f'({bad.size} such labels; max label {int(labels.max())})'
    )


# ----------------------------------------------------------------------------- files


def image_error(path: str) -> Exception | None:
  """Eagerly reads and decodes ``path``; returns the error to raise, or None."""
  import tensorflow as tf

  if not os.path.isfile(path):
    return FileNotFoundError(f'{path}: image file not found')
  try:
    tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
  except tf.errors.OpError as e:
    return ValueError(f'{path}: cannot decode image file: {e.message}')
  return None
