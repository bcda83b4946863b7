"""Kvasir-SEG polyp segmentation: folder reader, a fixed seeded split, and synthetic data.

Layout (as distributed): ``root/images/<stem>.jpg`` and ``root/masks/<stem>.jpg``,
1,000 colonoscopy images of varying size with the same file names in both
folders. Masks are JPEGs of a white polyp on black, so after decoding they hold
grey values near the edges; they are thresholded at 128 (`MASK_THRESHOLD`)
before anything else. `load_pair` resizes both to a square (SAM's input is
square): the image bilinearly, the thresholded mask nearest-neighbour.

Split (`split_stems`): the stems are sorted, permuted with
``np.random.default_rng(seed)`` and cut 80 / 10 / 10 % into 'train', 'val',
'test' (1,000 images: 800 / 100 / 100), so the split depends only on the set of
stems and the seed, not on the order the files are listed in.
`split_paths` gives a split's (image, mask) file paths, also for 'trainval'
(train + val): what the tf.data source 'kvasir' of :mod:`gps_jax.data.splits`
reads, after `check_sizes` has compared the file headers.

How this differs from the original GPS code: the original trains on all of
``Kvasir-SEG/images`` and tests on a 196-image "sessile-main" subset that is part
of that training folder, and computes its GPS selection gradients on its
validation loader, which is that test set. Here selection uses only the
training split, and test images are never trained on nor used for selection,
so the numbers are not directly comparable with the paper's.

`write_synthetic` writes a folder in the same layout (textured mucosa-like
backgrounds with one or two smooth blob "polyps"), for tests and offline demos.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
from PIL import Image

from gps_jax.errors import UserError
from gps_jax.files import write_atomic_path

EXTENSIONS = ('.jpg', '.jpeg', '.png')
SPLITS = ('train', 'val', 'test')
FRACTIONS = (0.8, 0.1, 0.1)
MASK_THRESHOLD = 128
_LAYOUT = 'the Kvasir-SEG layout: images/<name>.jpg and masks/<name>.jpg with the same names'


# ----------------------------------------------------------------------------- reading


def _index(folder: str) -> dict[str, str]:
  """{stem: path} of the image files (EXTENSIONS, any case) in `folder`."""
  if not os.path.isdir(folder):
    raise UserError(f'{folder}: folder not found; expected {_LAYOUT}')
  index: dict[str, str] = {}
  for name in sorted(os.listdir(folder)):
    stem, ext = os.path.splitext(name)
    if ext.lower() not in EXTENSIONS:
      continue
    if stem in index:
      raise UserError(f'{folder}: two files for {stem!r}: {os.path.basename(index[stem])}, {name}')
    index[stem] = os.path.join(folder, name)
  return index


def _indexes(root: str) -> tuple[dict[str, str], dict[str, str]]:
  return _index(os.path.join(root, 'images')), _index(os.path.join(root, 'masks'))


def _pairs(images: dict[str, str], masks: dict[str, str], root: str) -> list[str]:
  missing = sorted(set(images) - set(masks))
  if missing:
    shown = ', '.join(missing[:5]) + (', ...' if len(missing) > 5 else '')
    folder = os.path.join(root, 'masks')
    raise UserError(f'{folder}: no mask for {len(missing)} image(s): {shown}')
  if not images:
    raise UserError(f'{os.path.join(root, "images")}: no image files; expected {_LAYOUT}')
  return sorted(images)


def list_pairs(root: str) -> list[str]:
  """The sorted stems that have a file in both ``root/images`` and ``root/masks``.

  Raises UserError (naming the folder) when either folder is missing, when an
  image has no mask, or when there is no image at all. Masks without an image
  are ignored.
  """
  return _pairs(*_indexes(root), root)


def _open(path: str, mode: str | None) -> Image.Image:
  """The decoded image converted to `mode`; with mode None only its header is read."""
  try:
    with Image.open(path) as im:
      if mode is None:
        return im
      im.load()
      return im.convert(mode)
  except (OSError, SyntaxError, ValueError) as e:  # PIL's decoders raise all three
    raise UserError(f'{path}: cannot read image file: {e}') from e


def _check_size(image_path: str, mask_path: str, image_size, mask_size) -> None:
  if image_size != mask_size:
    raise UserError(
      f'{mask_path}: mask is {mask_size[0]}x{mask_size[1]} but its image {image_path} '
      f'is {image_size[0]}x{image_size[1]}'
    )


def check_sizes(image_paths: list[str], mask_paths: list[str]) -> None:
  """Raises UserError naming the first mask whose size differs from its image's.

  Reads the file headers only (no decoding); a file PIL cannot open is a
  UserError naming it too.
  """
  if len(image_paths) != len(mask_paths):
    raise ValueError(f'{len(image_paths)} image paths but {len(mask_paths)} mask paths')
  for image_path, mask_path in zip(image_paths, mask_paths):
    size = _open(image_path, None).size
    _check_size(image_path, mask_path, size, _open(mask_path, None).size)


def _load_paths(image_path: str, mask_path: str, size: int) -> tuple[np.ndarray, np.ndarray]:
  image = _open(image_path, 'RGB')
  grey = _open(mask_path, 'L')
  _check_size(image_path, mask_path, image.size, grey.size)
  binary = Image.fromarray(np.where(np.asarray(grey) >= MASK_THRESHOLD, 255, 0).astype(np.uint8))
  image = image.resize((size, size), Image.BILINEAR)
  binary = binary.resize((size, size), Image.NEAREST)
  return np.asarray(image, np.float32) / 255.0, np.asarray(binary) > 0


def load_pair(root: str, stem: str, size: int) -> tuple[np.ndarray, np.ndarray]:
  """(image float32 [size, size, 3] in [0, 1], mask bool [size, size]) of `stem`.

  The grey mask is thresholded at MASK_THRESHOLD before the nearest-neighbour
  resize, so JPEG noise creates no positives; the image is resized bilinearly.
  An unreadable file, or a mask whose size differs from its image's, is a
  UserError naming the file.
  """
  images, masks = _indexes(root)
  for index, folder in ((images, 'images'), (masks, 'masks')):
    if stem not in index:
      raise UserError(f'{os.path.join(root, folder)}: no file for {stem!r}')
  return _load_paths(images[stem], masks[stem], size)


# ----------------------------------------------------------------------------- split


def split_stems(
  stems: list[str], seed: int = 0, fractions: tuple[float, float, float] = FRACTIONS
) -> dict[str, list[str]]:
  """{'train', 'val', 'test': stems}: sort, permute by default_rng(seed), cut by `fractions`.

  The cut points are round(f_train * n) and round((f_train + f_val) * n); each
  split's stems are returned sorted. Disjoint, covering, and independent of the
  order of `stems`.
  """
  fractions = tuple(float(f) for f in fractions)
  if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
    raise UserError(f'split fractions {fractions} must be three non-negative numbers summing to 1')
  ordered = sorted(stems)
  if len(set(ordered)) != len(ordered):
    raise UserError('split_stems: the stems contain duplicates')
  n = len(ordered)
  perm = np.random.default_rng(seed).permutation(n)
  shuffled = [ordered[i] for i in perm]
  a = round(fractions[0] * n)
  b = round((fractions[0] + fractions[1]) * n)
  parts = (shuffled[:a], shuffled[a:b], shuffled[b:])
  return {name: sorted(part) for name, part in zip(SPLITS, parts)}


def _split_files(
  root: str, split: str, seed: int, allowed: tuple[str, ...]
) -> tuple[dict[str, str], dict[str, str], list[str]]:
  """({stem: image path}, {stem: mask path}, sorted stems of `split`); 'trainval' = train + val."""
  if split not in allowed:
    raise UserError(f'unknown Kvasir-SEG split {split!r}; expected one of {", ".join(allowed)}')
  images, masks = _indexes(root)
  parts = split_stems(_pairs(images, masks, root), seed)
  stems = sorted(parts['train'] + parts['val']) if split == 'trainval' else parts[split]
  if not stems:
    raise UserError(f'{root}: split {split!r} is empty ({len(images)} image/mask pairs)')
  return images, masks, stems


def split_paths(root: str, split: str, seed: int = 0) -> tuple[list[str], list[str]]:
  """(image paths, mask paths) of `split`, in sorted stem order.

  ``split`` is one of SPLITS or 'trainval' (the train and val stems together,
  sorted); the stems are those of ``split_stems(list_pairs(root), seed)``. An
  empty split is a UserError.
  """
  images, masks, stems = _split_files(root, split, seed, (*SPLITS, 'trainval'))
  return [images[s] for s in stems], [masks[s] for s in stems]


def load_split(
  root: str, split: str, size: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """(images [N, size, size, 3] float32, masks [N, size, size] bool, stems) of one split."""
  images, masks, stems = _split_files(root, split, seed, SPLITS)
  xs = np.empty((len(stems), size, size, 3), np.float32)
  ys = np.empty((len(stems), size, size), bool)
  for i, stem in enumerate(stems):
    xs[i], ys[i] = _load_paths(images[stem], masks[stem], size)
  return xs, ys, stems


# ----------------------------------------------------------------------------- synthetic


def _polar(shape: tuple[int, int], center, radius: float, harmonics) -> tuple[np.ndarray, ...]:
  """Distance of every pixel centre to `center` and the blob's radius in its direction."""
  yy, xx = np.meshgrid(np.arange(shape[0]) + 0.5, np.arange(shape[1]) + 0.5, indexing='ij')
  dy, dx = yy - center[0], xx - center[1]
  theta = np.arctan2(dy, dx)
  k = np.arange(1, len(harmonics) + 1)[:, None, None]
  coef = np.asarray(harmonics, np.float64).reshape(-1, 2)[:, :, None, None]
  wobble = (coef[:, 0] * np.cos(k * theta) + coef[:, 1] * np.sin(k * theta)).sum(0)
  return np.hypot(dy, dx), radius * (1.0 + wobble)


def blob_mask(shape: tuple[int, int], center, radius: float, harmonics) -> np.ndarray:
  """Bool [H, W] star-shaped blob: pixel centres (i + 0.5, j + 0.5) within r(theta) of center.

  ``center`` is (y, x); r(theta) = radius * (1 + sum_k a_k cos(k theta) + b_k sin(k theta))
  with ``harmonics`` = [(a_1, b_1), (a_2, b_2), ...]; star-shaped while
  sum |a_k| + |b_k| < 1.
  """
  dist, r = _polar(shape, center, radius, harmonics)
  return dist <= r


def _draw_blob(rng, shape: tuple[int, int]) -> dict:
  h, w = shape
  radius = rng.uniform(0.12, 0.3) * min(h, w)
  harmonics = rng.uniform(-1, 1, (4, 2)) * (rng.uniform(0.05, 0.2) / np.arange(1, 5)[:, None])
  harmonics *= min(1.0, 0.6 / np.abs(harmonics).sum())  # keeps r(theta) >= 0.4 radius
  center = (rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w)
  return dict(center=center, radius=float(radius), harmonics=harmonics)


def _smooth_noise(rng, shape: tuple[int, int], cells: tuple[int, int], channels: int = 1):
  """[H, W, channels] noise in about [-1, 1], bicubic upsampled from a cells grid."""
  out = np.empty((*shape, channels), np.float32)
  for c in range(channels):
    grid = rng.uniform(-1, 1, cells).astype(np.float32)
    out[..., c] = np.asarray(Image.fromarray(grid, 'F').resize(shape[::-1], Image.BICUBIC))
  return out


def _render(rng, shape: tuple[int, int], blobs: list[dict]) -> np.ndarray:
  """uint8 [H, W, 3]: mucosa-like background, polyps of a nearby colour with dome shading."""
  h, w = shape
  base = rng.uniform([165, 80, 70], [215, 125, 110])
  colour = base + 14 * _smooth_noise(rng, shape, (3, 4), 3)  # slow hue drift
  light = 1 + 0.15 * _smooth_noise(rng, shape, (3, 4))  # uneven illumination
  light *= 1 + 0.06 * _smooth_noise(rng, shape, (12, 16))  # mucosal folds
  yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing='ij')
  cy, cx = rng.uniform(-0.4, 0.4, 2)
  light *= (1 - rng.uniform(0.2, 0.4) * ((yy - cy) ** 2 + (xx - cx) ** 2) / 2)[..., None]
  delta = rng.uniform([4, -22, -16], [22, -6, -4])  # polyps: a little redder
  inside, dome = np.zeros((h, w, 1), bool), np.zeros((h, w, 1))
  for blob in blobs:  # overlapping polyps: one colour, the higher dome
    dist, r = _polar(shape, **blob)
    rho = np.clip(dist / r, 0, 1)[..., None]
    inside |= (dist <= r)[..., None]
    dome = np.maximum(dome, np.where(rho < 1, np.sqrt(1 - rho**2), 0))
  colour = np.where(inside, colour + delta, colour)
  light = np.where(inside, light * (0.92 + 0.16 * dome), light)  # brighter top, darker rim
  image = colour * light + rng.normal(0, 5, (h, w, 3))  # fine texture
  return np.clip(np.round(image), 0, 255).astype(np.uint8)


def synthetic_example(
  seed: int, index: int, image_size: tuple[int, int] = (96, 128)
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
  """(uint8 image [H, W, 3], bool mask [H, W], blobs) of synthetic image `index`.

  ``blobs`` are the `blob_mask` keyword arguments of the one or two polyps
  (about one image in five has two); the mask is their union, redrawn until it
  covers 4..50 % of the image. Drawn from default_rng([seed, index]) alone.
  """
  rng = np.random.default_rng([seed, index])
  shape = tuple(image_size)
  while True:
    blobs = [_draw_blob(rng, shape) for _ in range(2 if rng.random() < 0.2 else 1)]
    mask = np.logical_or.reduce([blob_mask(shape, **b) for b in blobs])
    if 0.04 <= mask.mean() <= 0.5:
      return _render(rng, shape, blobs), mask, blobs


def _save_jpeg(path: str, array: np.ndarray, quality: int) -> None:
  write_atomic_path(path, lambda tmp: Image.fromarray(array).save(tmp, 'JPEG', quality=quality))


def write_synthetic(
  root: str, n: int, seed: int, image_size: tuple[int, int] = (96, 128)
) -> list[str]:
  """Writes `n` synthetic pairs in the Kvasir-SEG layout under `root`; returns their stems.

  Images are JPEG quality 90, masks (255 polyp, 0 background) JPEG quality 95
  like the real data; stems are 'cju0%04d' % i. Same (n, seed), same bytes.
  """
  stems = ['cju0%04d' % i for i in range(n)]
  for folder in ('images', 'masks'):
    os.makedirs(os.path.join(root, folder), exist_ok=True)
  for i, stem in enumerate(stems):
    image, mask, _ = synthetic_example(seed, i, image_size)
    _save_jpeg(os.path.join(root, 'images', f'{stem}.jpg'), image, 90)
    _save_jpeg(os.path.join(root, 'masks', f'{stem}.jpg'), mask.astype(np.uint8) * 255, 95)
  return stems


def ensure_synthetic(root: str, n: int, seed: int) -> None:
  """`write_synthetic(root, n, seed)` unless `root` holds an ``images`` folder already; written
  into a temporary folder renamed into place, so a concurrent or killed writer (another
  process of the run) never leaves a half-written set behind."""
  if os.path.isdir(os.path.join(root, 'images')):
    return
  parent = os.path.dirname(os.path.abspath(root))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=os.path.basename(root) + '.tmp-', dir=parent)
  try:
    write_synthetic(tmp, n, seed)
    os.rename(tmp, root)
  except OSError:
    if not os.path.isdir(os.path.join(root, 'images')):  # not a race another writer won
      raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
