"""Procedural shapes on a 28×28 canvas: masks, anti-aliased rendering, placement.

A shape ('square', 'ellipse' or 'triangle'; see `shape_mask`) is drawn on a grid of
sub-pixels (`subpixel_grid`: 4×4 per pixel, ``SUPERSAMPLE``) and averaged down to
uint8 pixels (`render`), so its edges are anti-aliased. `shape_extent` bounds a shape
at any angle; `place_apart` draws centres of shapes that stay inside the image and
apart from each other. The mini-VTAB tasks (`gps_jax.data.mini_vtab`) are drawn with
these, NumPy only.
"""

from __future__ import annotations

import numpy as np

SIZE = 28
SUPERSAMPLE = 4
SHAPES = ('square', 'ellipse', 'triangle')


def subpixel_grid(size: int = SIZE, ss: int = SUPERSAMPLE) -> tuple[np.ndarray, np.ndarray]:
  """Sub-pixel centres (y, x) of a size×size image supersampled ss×ss."""
  c = (np.arange(size * ss) + 0.5) / ss
  return np.meshgrid(c, c, indexing='ij')


def shape_mask(kind: str, cx, cy, radius, angle, aspect=1.0, grid=None) -> np.ndarray:
  """Boolean supersampled mask of one shape centred at (cx, cy).

  ``radius``: the half length along the shape's axis (circumradius of the
  triangle, whose centre is its centroid); ``aspect`` >= 1 shrinks the other
  axis of 'square' (then a bar) and 'ellipse'; ``angle`` (radians) rotates the
  axis counter-clockwise from +x in image coordinates (y down).
  """
  yy, xx = grid if grid is not None else subpixel_grid()
  dx, dy = xx - cx, yy - cy
  c, s = np.cos(angle), np.sin(angle)
  u = c * dx - s * dy  # along the axis (angle measured with y pointing up)
  v = s * dx + c * dy
  if kind == 'square':
    return (np.abs(u) <= radius) & (np.abs(v) <= radius / aspect)
  if kind == 'ellipse':
    return (u / radius) ** 2 + (v * aspect / radius) ** 2 <= 1.0
  if kind == 'triangle':
    inside = np.ones_like(u, bool)
    for k in range(3):
      a = np.pi + 2 * np.pi * k / 3  # edge normals; a vertex lies on +u
      inside &= np.cos(a) * u + np.sin(a) * v <= radius / 2
    return inside
  raise ValueError(f'unknown shape {kind!r}; valid: {SHAPES}')


def _downsample(canvas: np.ndarray, ss: int = SUPERSAMPLE) -> np.ndarray:
  h, w = canvas.shape[0] // ss, canvas.shape[1] // ss
  return canvas.reshape(h, ss, w, ss).mean(axis=(1, 3))


def render_each(params: dict, kinds: tuple, grid) -> np.ndarray:
  """(n, 28, 28) images of one shape each: image i draws kinds[params['kind'][i]] with
  the i-th value of every other parameter."""
  n = len(params['kind'])
  objects = [
    {**{k: v[i] for k, v in params.items() if k != 'kind'}, 'kind': kinds[params['kind'][i]]}
    for i in range(n)
  ]
  return np.stack([render([o], grid) for o in objects])


def render(objects: list[dict], grid=None) -> np.ndarray:
  """uint8 (28, 28) image of shapes on black: each object a dict of shape_mask's
  arguments plus ``intensity`` in (0, 1]; overlaps take the maximum.

  Each shape is evaluated on the sub-pixels of the whole pixels around it only.
  """
  grid = grid if grid is not None else subpixel_grid()
  ss = grid[0].shape[0] // SIZE
  canvas = np.zeros(grid[0].shape, np.float32)
  for o in objects:
    kw = {k: v for k, v in o.items() if k != 'intensity'}
    ext = shape_extent(o['kind'], o['radius'], o.get('aspect', 1.0)) + 1.0
    x0, x1 = (int(np.clip(np.floor(o['cx'] + d * ext), 0, SIZE)) for d in (-1, 1))
    y0, y1 = (int(np.clip(np.floor(o['cy'] + d * ext), 0, SIZE)) for d in (-1, 1))
    box = np.s_[y0 * ss : (y1 + 1) * ss, x0 * ss : (x1 + 1) * ss]
    mask = shape_mask(grid=(grid[0][box], grid[1][box]), **kw)
    canvas[box] = np.maximum(canvas[box], mask * np.float32(o['intensity']))
  return np.round(_downsample(canvas) * 255).astype(np.uint8)


def shape_extent(kind: str, radius: float, aspect: float = 1.0) -> float:
  """Radius of a disc around the centre that contains the shape at any angle."""
  if kind == 'square':
    return float(radius * np.hypot(1.0, 1.0 / aspect))
  return float(radius)  # ellipse: semi-major axis; triangle: circumradius


def place_apart(rng, kinds, radii, min_gap: float, tries: int = 100):
  """Centres, one object after the other, such that the discs of the shapes' extents
  lie inside the image and are pairwise at least min_gap apart; None if stuck."""
  ext = np.array([shape_extent(SHAPES[k], r) for k, r in zip(kinds, radii)])
  centres = np.zeros((len(ext), 2))
  for j, e in enumerate(ext):
    for _ in range(tries):
      c = rng.uniform(e + 0.5, SIZE - 0.5 - e, 2)
      d = np.hypot(*(centres[:j] - c).T)
      if np.all(d >= ext[:j] + e + min_gap):
        centres[j] = c
        break
    else:
      return None
  return centres


def objects_of(kinds, centres, radii, angles, intensities):
  """`render`'s object dicts of shapes given by kind (an index into SHAPES), centre
  (x, y), radius, angle and intensity, one value of each per object."""
  return [
    dict(
      kind=SHAPES[k], cx=c[0], cy=c[1], radius=r, angle=a, intensity=i
    )
    for k, c, r, a, i in zip(kinds, centres, radii, angles, intensities)
  ]  # fmt: skip
