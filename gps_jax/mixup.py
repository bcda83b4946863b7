"""timm-style batch mixup / cutmix with label smoothing, as a jittable JAX function.

Part of the FGVC recipe (reference README section 2); the train step of
:mod:`gps_jax.trainer` applies it on device when ``config.train.mixup`` or
``config.train.cutmix`` is positive.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _smoothed_one_hot(labels: jax.Array, num_classes: int, smoothing: float) -> jax.Array:
  off = smoothing / num_classes
  on = 1.0 - smoothing + off
  return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * (on - off) + off


def mix_batch(
  rng: jax.Array,
  images: jax.Array,
  labels: jax.Array,
  num_classes: int,
  *,
  mixup_alpha: float = 0.8,
  cutmix_alpha: float = 1.0,
  switch_prob: float = 0.5,
  prob: float = 1.0,
  label_smoothing: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
  """timm ``Mixup`` (mode 'batch', ``correct_lam=True``) as a jittable JAX function.

  With probability ``prob`` one of mixup / cutmix is applied to the whole batch (cutmix
  with probability ``switch_prob`` when both alphas are positive, otherwise whichever
  alpha is positive), with lam ~ Beta(alpha, alpha); each image is mixed with the image
  at the mirrored batch position (``x.flip(0)``; with an odd batch the middle image mixes
  with itself, timm asks for an even batch). Mixup: ``lam * x + (1 - lam) * x_flipped``.
  Cutmix (timm ``rand_bbox``): a box of side ``int(side * sqrt(1 - lam))`` centred at a
  uniform pixel, its half-sides ``cut // 2`` clipped to the image, is pasted from
  ``x_flipped`` and lam is recomputed as ``1 - box_area / (H * W)``.

  Args:
    rng: a JAX PRNG key; the result is a deterministic function of it.
    images: (B, H, W, C) float images (integer inputs are cast to float32).
    labels: (B,) integer class labels.
    num_classes: C for the one-hot targets (static).
    mixup_alpha, cutmix_alpha: Beta parameters; 0 disables that mode (static).
    switch_prob: probability of cutmix when both modes are enabled.
    prob: probability that any mixing is applied to the batch.
    label_smoothing: smoothing s applied to each one-hot before mixing (timm); do not
      smooth again in the loss. ``switch_prob``, ``prob`` and ``label_smoothing`` may be
      traced; ``num_classes`` and the alphas must be static under ``jax.jit``.

  Returns:
    (mixed images, same shape/dtype as ``images`` (float32 for integer inputs),
     soft targets float32 (B, num_classes), rows summing to one:
     ``lam * smooth(onehot(y)) + (1 - lam) * smooth(onehot(y.flip(0)))``).
  """
  if images.ndim != 4:
    raise ValueError(f'mix_batch: images must be (B, H, W, C), got {images.shape}')
  if not jnp.issubdtype(images.dtype, jnp.floating):
    images = images.astype(jnp.float32)
  _, h, w, _ = images.shape
  k_apply, k_switch, k_mix, k_cut, k_cy, k_cx = jax.random.split(rng, 6)

  use_mixup = mixup_alpha > 0
  use_cutmix = cutmix_alpha > 0
  apply = jax.random.uniform(k_apply) < prob
  if use_mixup and use_cutmix:
    is_cutmix = jax.random.uniform(k_switch) < switch_prob
  else:
    is_cutmix = jnp.asarray(use_cutmix)
  if not (use_mixup or use_cutmix):
    apply = jnp.asarray(False)

  flipped = images[::-1]
  out = images
  lam = jnp.float32(1.0)

  if use_mixup:
    lam_mix = jax.random.beta(k_mix, mixup_alpha, mixup_alpha).astype(jnp.float32)
    lam_mix_x = lam_mix.astype(images.dtype)
    mixed = images * lam_mix_x + flipped * (1 - lam_mix_x)
    do_mix = apply & ~is_cutmix
    out = jnp.where(do_mix, mixed, out)
    lam = jnp.where(do_mix, lam_mix, lam)

  if use_cutmix:
    lam_cut = jax.random.beta(k_cut, cutmix_alpha, cutmix_alpha).astype(jnp.float32)
    ratio = jnp.sqrt(1.0 - lam_cut)
    half_h = jnp.floor(h * ratio).astype(jnp.int32) // 2
    half_w = jnp.floor(w * ratio).astype(jnp.int32) // 2
    cy = jax.random.randint(k_cy, (), 0, h)
    cx = jax.random.randint(k_cx, (), 0, w)
    y0, y1 = jnp.clip(cy - half_h, 0, h), jnp.clip(cy + half_h, 0, h)
    x0, x1 = jnp.clip(cx - half_w, 0, w), jnp.clip(cx + half_w, 0, w)
    rows = jnp.arange(h)[:, None]
    cols = jnp.arange(w)[None, :]
    box = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)  # (H, W)
    cut = jnp.where(box[None, :, :, None], flipped, images)
    lam_box = 1.0 - ((y1 - y0) * (x1 - x0)).astype(jnp.float32) / (h * w)
    do_cut = apply & is_cutmix
    out = jnp.where(do_cut, cut, out)
    lam = jnp.where(do_cut, lam_box, lam)

  y_a = _smoothed_one_hot(labels, num_classes, label_smoothing)
  targets = lam * y_a + (1.0 - lam) * y_a[::-1]
  return out, targets
