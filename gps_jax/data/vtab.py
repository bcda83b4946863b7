"""The 19 VTAB-1k tasks as data: TFDS source, pinned version, splits, labels.

Source of truth: the VTAB-1k task table in ``shared/reference/README.md``
(section 3), which follows google-research/task_adaptation and the TFDS versions
VPT used. ``train800`` is ``train[:800]`` of the train source, ``val200`` the
split listed in the table and ``train800val200`` both joined with ``+``.

A task either uses the TFDS ``'label'`` feature or a label transform named in
``TaskSpec.label_fn`` and registered in ``LABEL_FNS``: a tf function from one
decoded TFDS example (a dict of tensors) to an int64 scalar label. Binned labels
follow the table's rule: the label is the largest index i with
``thresholds[i] < value``. Decoding and resizing the images is
`gps_jax.data.splits`'s and the input pipeline's job.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import tensorflow as tf

from gps_jax.data.augment import hide_gpus_from_tf

hide_gpus_from_tf()

Example = dict  # A decoded TFDS example: feature name -> tf.Tensor (or nested dict).
LabelFn = Callable[[Example], tf.Tensor]

CLEVR_DISTANCE_THRESHOLDS = (0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0)
KITTI_DISTANCE_THRESHOLDS = (-100.0, 8.0, 20.0, 999.0)
KITTI_NO_VEHICLE_DEPTH = 1000.0  # Depth used when a scene has no vehicle: class 3.
KITTI_VEHICLE_TYPES = 3  # objects/type < 3: Car, Van, Truck.


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """One VTAB-1k task; ``trainval_split`` is derived as train + '+' + val."""

  name: str
  tfds_name: str  # Builder name with config, as for tfds.load ('sun397/tfds').
  version: str  # Version VPT used (reference table); see check_version.
  val_split: str  # val200.
  test_split: str
  num_classes: int
  train_split: str = 'train[:800]'  # train800.
  image_key: str = 'image'
  label_fn: str | None = None  # A LABEL_FNS name; None: the 'label' feature.
  grayscale: bool = False  # Tile a single channel to RGB.
  image_scale: int = 1  # Multiplies the uint8 image (dsprites is {0, 1}: 255).
  manual_download: bool = False  # TFDS needs the files placed by hand.
  trainval_split: str = dataclasses.field(init=False)

  def __post_init__(self):
    object.__setattr__(self, 'trainval_split', f'{self.train_split}+{self.val_split}')


_RETINOPATHY = 'diabetic_retinopathy_detection/btgraham-300'
_CLEVR = ('clevr', '3.1.0', 'train[63000:63200]', 'validation')
_KITTI = ('kitti', '3.2.0', 'validation[:200]', 'test')
_DSPRITES = ('dsprites', '2.0.0', 'train[589824:590024]', 'train[663552:]')
_SMALLNORB = ('smallnorb', '2.0.0', 'test[:200]', 'test[50%:]')
_MANUAL = {'manual_download': True}
_GRAY = {'grayscale': True}
_GRAY01 = {'grayscale': True, 'image_scale': 255}  # {0, 1} images.
_TASK_LIST = (
  # Natural.
  TaskSpec('caltech101', 'caltech101', '3.0.1', 'train[2754:2954]', 'test', 102),
  TaskSpec('cifar100', 'cifar100', '3.0.2', 'train[45000:45200]', 'test', 100),
  TaskSpec('dtd', 'dtd', '3.0.1', 'validation[:200]', 'test', 47),
  TaskSpec('oxford_flowers102', 'oxford_flowers102', '2.1.1', 'validation[:200]', 'test', 102),
  TaskSpec('oxford_iiit_pet', 'oxford_iiit_pet', '3.2.0', 'train[2944:3144]', 'test', 37),
  TaskSpec('svhn', 'svhn_cropped', '3.0.0', 'train[65931:66131]', 'test', 10),
  TaskSpec('sun397', 'sun397/tfds', '4.0.0', 'validation[:200]', 'test', 397),
  # Specialized.
  TaskSpec('patch_camelyon', 'patch_camelyon', '2.0.0', 'validation[:200]', 'test', 2),
  TaskSpec('eurosat', 'eurosat/rgb', '2.0.0', 'train[16200:16400]', 'train[21600:]', 10),
  TaskSpec('resisc45', 'resisc45', '3.0.0', 'train[18900:19100]', 'train[25200:]', 45, **_MANUAL),
  TaskSpec('diabetic_retinopathy', _RETINOPATHY, '3.0.0', 'validation[:200]', 'test', 5, **_MANUAL),
  # Structured.
  TaskSpec('clevr_count', *_CLEVR, 8, label_fn='clevr_count'),
  TaskSpec('clevr_distance', *_CLEVR, 6, label_fn='clevr_distance'),
  TaskSpec('dmlab', 'dmlab', '2.0.1', 'validation[:200]', 'test', 6),
  TaskSpec('kitti_distance', *_KITTI, 4, label_fn='kitti_distance'),
  TaskSpec('dsprites_location', *_DSPRITES, 16, label_fn='dsprites_location', **_GRAY01),
  TaskSpec('dsprites_orientation', *_DSPRITES, 16, label_fn='dsprites_orientation', **_GRAY01),
  TaskSpec('smallnorb_azimuth', *_SMALLNORB, 18, label_fn='smallnorb_azimuth', **_GRAY),
  TaskSpec('smallnorb_elevation', *_SMALLNORB, 9, label_fn='smallnorb_elevation', **_GRAY),
)
TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in _TASK_LIST}

_VERSION_NOTES = {
  'oxford_iiit_pet': (
    'VPT used oxford_iiit_pet 3.2.0; current TFDS offers only 4.0.0, so the '
    'pinned version cannot be loaded and 4.0.0 is used instead.'
  ),
}


def get_task(name: str) -> TaskSpec:
  """The TaskSpec called ``name``; ValueError listing the valid names otherwise."""
  if name not in TASKS:
    raise ValueError(f'unknown VTAB-1k task {name!r}; valid names: {", ".join(TASKS)}')
  return TASKS[name]


def check_version(spec: TaskSpec, builder_info_version) -> str | None:
  """None when the builder's version is the pinned one, else a warning message.

  ``builder_info_version`` is a string or ``tfds.core.Version`` (for example
  ``tfds.builder(spec.tfds_name).info.version``). The message names both
  versions; for oxford_iiit_pet it adds that VPT used 3.2.0 while current TFDS
  has only 4.0.0, so that mismatch is expected and cannot be avoided.
  """
  found = str(builder_info_version)
  if found == spec.version:
    return None
  message = (
    f'{spec.name}: TFDS {spec.tfds_name} has version {found}, but the reference '
    f'(VPT) version is {spec.version}; splits and examples may differ.'
  )
  note = _VERSION_NOTES.get(spec.name)
  return f'{message} Note: {note}' if note else message


# ----------------------------------------------------------------------------- labels


def bin_label(value, thresholds: Sequence[float]) -> tf.Tensor:
  """int64 index of the largest ``thresholds[i] < value`` (thresholds ascending).

  Works elementwise on a tensor of values. A value at or below ``thresholds[0]``
  (or NaN) gives -1 (task_adaptation's ``reduce_max(where(...))`` would give the
  int64 minimum there); one above ``thresholds[-1]`` gives ``len(thresholds) - 1``.
  Comparisons are in float32, as in task_adaptation.
  """
  value = tf.cast(value, tf.float32)
  below = tf.constant(thresholds, tf.float32) < value[..., None]
  return tf.reduce_sum(tf.cast(below, tf.int64), axis=-1) - 1


def clevr_count(example: Example) -> tf.Tensor:
  """Number of objects minus 3 (CLEVR scenes hold 3 to 10 objects: 8 classes)."""
  return tf.cast(tf.size(example['objects']['size']), tf.int64) - 3


def clevr_distance(example: Example) -> tf.Tensor:
  """Depth (pixel_coords z) of the closest object, binned into 6 classes."""
  depth = tf.reduce_min(example['objects']['pixel_coords'][:, 2])
  return bin_label(depth, CLEVR_DISTANCE_THRESHOLDS)


def kitti_distance(example: Example) -> tf.Tensor:
  """Depth z of the closest vehicle (type < 3), 1000 if none, binned: 4 classes."""
  objects = example['objects']
  is_vehicle = objects['type'] < KITTI_VEHICLE_TYPES
  depths = tf.boolean_mask(tf.cast(objects['location'][:, 2], tf.float32), is_vehicle)
  depth = tf.reduce_min(tf.concat([depths, [KITTI_NO_VEHICLE_DEPTH]], axis=0))
  return bin_label(depth, KITTI_DISTANCE_THRESHOLDS)


def _grouped(key: str, num_original: int, num_classes: int) -> LabelFn:
  """floor(example[key] * num_classes / num_original): merges neighbouring values."""

  def label_fn(example: Example) -> tf.Tensor:
    return tf.cast(example[key], tf.int64) * num_classes // num_original

  label_fn.__name__ = f'{key}_{num_original}_to_{num_classes}'
  return label_fn


def _feature(key: str) -> LabelFn:
  def label_fn(example: Example) -> tf.Tensor:
    return tf.cast(example[key], tf.int64)

  label_fn.__name__ = key
  return label_fn


LABEL_FNS: dict[str, LabelFn] = {
  'clevr_count': clevr_count,
  'clevr_distance': clevr_distance,
  'kitti_distance': kitti_distance,
  'dsprites_location': _grouped('label_x_position', 32, 16),
  'dsprites_orientation': _grouped('label_orientation', 40, 16),
  'smallnorb_azimuth': _feature('label_azimuth'),
  'smallnorb_elevation': _feature('label_elevation'),
}


def example_label(spec: TaskSpec, example: Example) -> tf.Tensor:
  """The task's int64 label of a TFDS example (its 'label' or ``spec.label_fn``)."""
  if spec.label_fn is None:
    return tf.cast(example['label'], tf.int64)
  return tf.cast(LABEL_FNS[spec.label_fn](example), tf.int64)
