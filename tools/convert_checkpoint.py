"""Converts a checkpoint to the gps_jax layout and prints its parameters per module.

  .venv/bin/python tools/convert_checkpoint.py --model=swin --variant=B --num_classes=0 \
      swin_base_patch4_window7_224.safetensors swin_b.npz

Reads anything ``gps_jax.load_checkpoint`` reads (vit_jax ``.npz``, timm
``.safetensors`` / ``.pth`` / ``.bin`` for ViT, Swin and ConvNeXt), converts it
to the Flax layout of the chosen model (resizing position embeddings or
relative-position tables for ``--image_size`` / ``--window_size``) and, when an
output path is given, writes a pickle-free ``.npz`` whose keys are the
'/'-joined parameter paths; ``load_checkpoint`` reads it back for that model.
``--num_classes=0`` (the default) drops the head: fine-tuning adds its own.
"""

from __future__ import annotations

from absl import app
from absl import flags
from absl import logging

from gps_jax import tree as tree_lib
from gps_jax import weights
from gps_jax.mask_stats import block_of
from gps_jax.models.registry import FAMILIES, family
from gps_jax.vit_npz import save_vit_npz

FLAGS = flags.FLAGS
flags.DEFINE_enum('model', 'vit', list(FAMILIES), 'Backbone family.')
flags.DEFINE_string('variant', 'B/16', "Variant: ViT 'B/16', 'L/16', ...; Swin / ConvNeXt 'T'-'L'.")
flags.DEFINE_integer('image_size', 224, 'Input size of the converted model.')
flags.DEFINE_integer(
  'window_size', 7, 'Window size of the converted model (families with windows: Swin).'
)
flags.DEFINE_integer('num_classes', 0, 'Head classes to keep (0: no head).')


def model_config(name: str, variant: str, image_size: int, num_classes: int, window_size: int):
  """The family's config of ``variant``; ``window_size`` where the family has windows."""
  cfg = family(name).config(variant, num_classes=num_classes, image_size=image_size)
  if 'window_size' in cfg:
    cfg.window_size = window_size
  return cfg


def module_counts(params) -> dict[str, int]:
  """Parameter count per top-level module / block, in the order of the model."""
  counts: dict[str, int] = {}
  for path, value in tree_lib.flat(params).items():
    name = block_of(path)
    counts[name] = counts.get(name, 0) + int(value.size)
  return counts


def main(argv):
  if len(argv) not in (2, 3):
    raise app.UsageError('usage: convert_checkpoint.py [flags] INPUT [OUTPUT.npz]')
  logging.set_verbosity(logging.WARNING)
  cfg = model_config(
    FLAGS.model, FLAGS.variant, FLAGS.image_size, FLAGS.num_classes, FLAGS.window_size
  )
  params = weights.load_checkpoint(argv[1], cfg)
  counts = module_counts(params)
  width = max(len(k) for k in counts)
  for name, n in counts.items():
    print(f'{name:<{width}}  {n:>14,}')
  print(f'{"total":<{width}}  {sum(counts.values()):>14,}')
  if len(argv) == 3:
    if not argv[2].endswith('.npz'):
      raise app.UsageError(f'{argv[2]}: the output must be an .npz file')
    save_vit_npz(argv[2], params)
    print(f'wrote {argv[2]} ({FLAGS.model} {FLAGS.variant}, image {FLAGS.image_size})')


if __name__ == '__main__':
  app.run(main)
