"""Every data source as one thing: a split, an unbatched tf.data stream of examples.

``open_split(data_config, role)`` returns a :class:`Split` whatever
``config.data.source`` says:

* ``'memory'``: the offline demo sets (``fashion_mnist``, ``mnist_5k``) held as
  numpy arrays (:mod:`gps_jax.data.sources`).
* ``'vtab'``: a VTAB-1k task read from prepared TFDS data (``data.name`` is a
  task of :data:`gps_jax.data.vtab.TASKS`), with the task's splits and labels.
* ``'tfds'``: another TFDS image-classification set of :data:`TFDS_SETS` (the
  FGVC builders and CIFAR-100 full) with train / val / trainval / test roles.
* ``'vtab_folder'``: a VTAB-1k folder in the GPS/SSF layout (``*.txt``).
* ``'vpt_folder'``: an FGVC folder in the VPT layout (``*.json``).
* ``'kvasir'``: a Kvasir-SEG folder (``images/``, ``masks/``) with the fixed
  seeded 80/10/10 split of :mod:`gps_jax.data.kvasir`; labels are masks.

The examples of a split are ``{'image': ..., 'label': ...}`` where 'image'
is whatever is cheapest to hold (encoded bytes for TFDS, a file path for the
folders, a uint8 array for memory); ``Split.decode`` turns it into a uint8
``(H, W, 3)`` RGB image inside the pipeline, after caching and shuffling, so a
cached split holds compressed images only. 'label' is an int64 class, except
for the segmentation sources of :data:`TASKS` (see :func:`task_of`): there it
is what ``Split.decode_label`` decodes into a uint8 ``(H, W)`` mask of 0 / 1
(for 'kvasir': the mask file's path), also inside the pipeline.

Split roles: ``train``, ``val``, ``trainval`` and ``test`` for every source.
For VTAB-1k ``train`` is train800, ``val`` val200, ``trainval`` train800val200
(the names ``train800``... are accepted too). For Kvasir-SEG ``trainval`` is
the train and val images together.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable

import ml_collections
import numpy as np
import tensorflow as tf

from gps_jax.data import folders
from gps_jax.data import sources
from gps_jax.data import vtab
from gps_jax.data.augment import hide_gpus_from_tf
from gps_jax.errors import UserError

hide_gpus_from_tf()
log = logging.getLogger(__name__)

SOURCES = ('memory', 'vtab', 'tfds', 'vtab_folder', 'vpt_folder', 'kvasir')
# The sources whose labels are not classes; every other source is 'classification'.
TASKS = {'kvasir': 'segmentation'}
ROLES = ('train', 'val', 'trainval', 'test')
_VTAB_ROLES = {'train800': 'train', 'val200': 'val', 'train800val200': 'trainval'}


@dataclasses.dataclass(frozen=True)
class Split:
  """One split: ``dataset`` of unbatched examples and how to decode their image.

  ``decode(example['image'])`` gives uint8 (H, W, 3); ``find_bad_example()``,
  called after a decoding error, returns an exception naming the bad file (or
  None when it cannot tell). ``decode_label`` None: example['label'] is an
  integer class; otherwise ``decode_label(example['label'])`` gives the uint8
  (H, W) segmentation mask of 0 / 1, the size of the decoded image.
  """

  name: str
  dataset: tf.data.Dataset
  num_examples: int
  num_classes: int
  decode: Callable[[tf.Tensor], tf.Tensor]
  find_bad_example: Callable[[], Exception | None] = lambda: None
  decode_label: Callable[[tf.Tensor], tf.Tensor] | None = None


@dataclasses.dataclass(frozen=True)
class TfdsSet:
  """A TFDS image-classification set: builder name, split per role, classes."""

  tfds_name: str
  splits: dict
  num_classes: int
  manual_download: bool = False
  note: str = ''


def _held_out(num_classes: int, note: str, **kw) -> TfdsSet:
  """Builders with only train and test: val is the last 10 % of train."""
  splits = {'train': 'train[:90%]', 'val': 'train[90%:]', 'trainval': 'train', 'test': 'test'}
  return TfdsSet(splits=splits, num_classes=num_classes, note=note, **kw)


_HELD_OUT_NOTE = (
  'TFDS has no validation split here: val is train[90%:] (TFDS shuffles examples '
  'when it prepares a set, so this is a random 10 %), train is train[:90%]'
)
# The FGVC sets that have TFDS builders, and CIFAR-100 for general classification.
TFDS_SETS: dict[str, TfdsSet] = {
  'cub': _held_out(200, _HELD_OUT_NOTE, tfds_name='caltech_birds2011'),
  'oxford_flowers': TfdsSet(
    'oxford_flowers102',
    {'train': 'train', 'val': 'validation', 'trainval': 'train+validation', 'test': 'test'},
    102,
  ),
  'stanford_dogs': _held_out(120, _HELD_OUT_NOTE, tfds_name='stanford_dogs'),
  'stanford_cars': _held_out(196, _HELD_OUT_NOTE, tfds_name='cars196'),
  'cifar100': TfdsSet(
    'cifar100',
    {'train': 'train[:45000]', 'val': 'train[45000:]', 'trainval': 'train', 'test': 'test'},
    100,
  ),
}


def role_name(source: str, role: str) -> str:
  """The canonical role ('train', 'val', 'trainval', 'test') of a split name."""
  canonical = _VTAB_ROLES.get(role, role) if source in ('vtab', 'vtab_folder') else role
  if canonical not in ROLES:
    extra = ', or train800, val200, train800val200' if source in ('vtab', 'vtab_folder') else ''
    raise UserError(
      f'config.data split {role!r} for source {source!r}: use one of {", ".join(ROLES)}{extra}'
    )
  return canonical


def task_of(data: ml_collections.ConfigDict) -> str:
  """'segmentation' or 'classification': what the labels of config.data's source are."""
  return TASKS.get(data.source, 'classification')


def num_classes(data: ml_collections.ConfigDict) -> int:
  """The class count of the configured data set (config.data.num_classes wins if > 0).

  0 for 'kvasir': its labels are binary masks, not classes.
  """
  if data.num_classes:
    return int(data.num_classes)
  source = data.source
  if source == 'kvasir':
    return 0
  if source == 'memory':
    return sources.num_classes(data.name)
  if source in ('vtab', 'vtab_folder'):
    return vtab.get_task(data.name).num_classes
  if source == 'tfds':
    return _tfds_set(data.name).num_classes
  if source == 'vpt_folder':
    raise UserError(
      'config.data.num_classes must be set for source "vpt_folder" (FGVC folders do not '
      'say how many classes there are)'
    )
  raise UserError(f'config.data.source={source!r}: use one of {", ".join(SOURCES)}')


def open_split(data: ml_collections.ConfigDict, role: str) -> Split:
  """The split ``role`` of the data set described by ``config.data``."""
  source = data.source
  if source not in SOURCES:
    raise UserError(f'config.data.source={source!r}: use one of {", ".join(SOURCES)}')
  role = role_name(source, role)
  n_cls = num_classes(data)
  if source == 'memory':
    split = _memory_split(data, role, n_cls)
  elif source == 'vtab':
    split = _vtab_split(data, role, n_cls)
  elif source == 'tfds':
    split = _tfds_split(data, role, n_cls)
  elif source == 'kvasir':
    from gps_jax.data import kvasir_split  # it builds on Split: imported when used

    split = kvasir_split.open_kvasir(data, role, n_cls)
  else:
    split = _folder_split(data, source, role, n_cls)
  return split


# ----------------------------------------------------------------------------- memory


def _rgb_uint8(image: tf.Tensor) -> tf.Tensor:
  if image.shape.rank == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    image = tf.tile(image, [1, 1, 3])
  return image


def memory_split(name: str, images, labels, num_classes: int) -> Split:
  """A Split over in-memory uint8 images (N, H, W[, C]) and integer labels (N,)."""
  images, labels = np.asarray(images), np.asarray(labels)
  if images.dtype != np.uint8:
    raise ValueError(f'{name}: images must be uint8, got {images.dtype}')
  if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
    raise ValueError(f'{name}: images must be (N, H, W) or (N, H, W, 1|3), got {images.shape}')
  if labels.shape != (len(images),):
    raise ValueError(f'{name}: labels must have shape ({len(images)},), got {labels.shape}')
  folders.check_num_classes(labels, num_classes, name)
  ds = tf.data.Dataset.from_tensor_slices({'image': images, 'label': labels.astype(np.int64)})
  return Split(name, ds, len(labels), num_classes, _rgb_uint8)


def _memory_split(data, role: str, n_cls: int) -> Split:
  images, labels = sources.load_dataset(
    data.name, role, data_dir=data.data_dir or None, seed=data.split_seed
  )
  return memory_split(f'{data.name}:{role}', images, labels, n_cls)


# ----------------------------------------------------------------------------- TFDS


def _tfds_set(name: str) -> TfdsSet:
  if name not in TFDS_SETS:
    raise UserError(
      f'config.data.name={name!r} is not a known TFDS set for source "tfds"; use one of '
      f'{", ".join(TFDS_SETS)} (VTAB-1k tasks use source "vtab")'
    )
  return TFDS_SETS[name]


def decode_bytes(scale: int = 1) -> Callable[[tf.Tensor], tf.Tensor]:
  def decode(encoded: tf.Tensor) -> tf.Tensor:
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    if scale != 1:
      image = image * tf.constant(scale, tf.uint8)
    return image

  return decode


def _pinned_builder(tfds_name: str, version: str, data_dir):
  """The builder of `version` when data of that version is prepared in data_dir, else None."""
  import tensorflow_datasets as tfds

  try:
    builder = tfds.builder(f'{tfds_name}:{version}', data_dir=data_dir)
  except Exception:  # Version neither in the code nor on disk: the default is tried next.
    return None
  return builder if builder.is_prepared() else None


def tfds_builder(
  tfds_name: str, data: ml_collections.ConfigDict, manual: bool, version: str | None = None
):
  """The prepared TFDS builder, or a FileNotFoundError saying how to prepare it.

  With a pinned ``version``, data prepared at that version is used when present
  (e.g. VPT's caltech101 3.0.1); otherwise the installed default version.
  """
  import tensorflow_datasets as tfds

  data_dir = data.data_dir or None
  manual_dir = data.manual_dir or None
  if version:
    pinned = _pinned_builder(tfds_name, version, data_dir)
    if pinned is not None:
      return pinned
  try:
    builder = tfds.builder(tfds_name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise UserError(f'TFDS has no builder {tfds_name!r} ({e})') from e
  if builder.is_prepared():
    return builder
  if data.prepare:
    config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    builder.download_and_prepare(download_config=config)
    return builder
  where = builder.data_dir
  if manual:
    hint = (
      f'{tfds_name} needs a manual download: put the files the TFDS catalogue lists for it '
      f'in a folder, set config.data.manual_dir to it and config.data.prepare=True, or run '
      f'`tfds build {tfds_name} --data_dir={data_dir or "~/tensorflow_datasets"} '
      f'--manual_dir=<folder>`'
    )
  else:
    hint = (
      f'prepare it with `tfds build {tfds_name} --data_dir={data_dir or "~/tensorflow_datasets"}` '
      f'on a machine with network (then copy the folder here), or set config.data.prepare=True'
    )
  also = (
    f' (nor at the pinned version {version})'
    if version and version != str(builder.info.version)
    else ''
  )
  raise FileNotFoundError(f'TFDS data set {tfds_name} is not prepared in {where}{also}: {hint}')


def _from_builder(builder, split: str, name: str, n_cls: int, example_fn, decode) -> Split:
  import tensorflow_datasets as tfds

  try:
    ds = builder.as_dataset(
      split=split, decoders={'image': tfds.decode.SkipDecoding()}, shuffle_files=False
    )
  except (KeyError, ValueError) as e:
    raise UserError(
      f'{name}: cannot read split {split!r} from {builder.data_dir} '
      f'(prepared splits: {", ".join(builder.info.splits) or "none"}): {e}'
    ) from e
  ds = ds.map(example_fn, num_parallel_calls=tf.data.AUTOTUNE)
  return Split(name, ds, _count(builder, split, ds), n_cls, decode)


def _count(builder, split: str, ds: tf.data.Dataset) -> int:
  """Examples in `split`: from the prepared metadata, else by counting the stream."""
  try:
    count = builder.info.splits[split].num_examples
  except (KeyError, ValueError):
    count = 0
  if count:
    return int(count)
  cardinality = int(ds.cardinality())
  if cardinality >= 0:
    return cardinality
  return int(ds.reduce(np.int64(0), lambda c, _: c + 1))


def _vtab_split(data, role: str, n_cls: int) -> Split:
  spec = vtab.get_task(data.name)
  builder = tfds_builder(spec.tfds_name, data, spec.manual_download, spec.version)
  warning = vtab.check_version(spec, builder.info.version)
  if warning:
    log.warning(warning)
  split = {
    'train': spec.train_split,
    'val': spec.val_split,
    'trainval': spec.trainval_split,
    'test': spec.test_split,
  }[role]

  def example_fn(ex):
    return {'image': ex[spec.image_key], 'label': vtab.example_label(spec, ex)}

  decode = decode_bytes(spec.image_scale)
  return _from_builder(builder, split, f'{spec.name}:{split}', n_cls, example_fn, decode)


def _tfds_split(data, role: str, n_cls: int) -> Split:
  spec = _tfds_set(data.name)
  builder = tfds_builder(spec.tfds_name, data, spec.manual_download)
  split = spec.splits[role]

  def example_fn(ex):
    return {'image': ex['image'], 'label': tf.cast(ex['label'], tf.int64)}

  name = f'{data.name}:{split}'
  return _from_builder(builder, split, name, n_cls, example_fn, decode_bytes())


# ----------------------------------------------------------------------------- folders


def folder_split(name: str, paths: list[str], labels, num_classes: int) -> Split:
  """A Split over image files; a file that cannot be decoded is named in the error."""
  labels = np.asarray(labels)
  if labels.shape != (len(paths),):
    raise ValueError(f'{name}: {len(paths)} paths but labels of shape {labels.shape}')
  folders.check_num_classes(labels, num_classes, name)
  ds = tf.data.Dataset.from_tensor_slices(
    {'image': tf.constant(paths, tf.string), 'label': labels.astype(np.int64)}
  )
  decode = decode_bytes()

  def find_bad_example():
    for path in paths:
      error = folders.image_error(path)
      if error is not None:
        return error
    return None

  return Split(
    name, ds, len(paths), num_classes, lambda p: decode(tf.io.read_file(p)), find_bad_example
  )


def _folder_split(data, source: str, role: str, n_cls: int) -> Split:
  root = data.data_dir
  if not root:
    raise UserError(f'config.data.data_dir must name the dataset folder for source {source!r}')
  if source == 'vtab_folder':
    paths, labels = folders.read_vtab_folder(root, role)
  else:
    paths, labels = folders.read_vpt_folder(root, role, data.image_dir or None)
  name = f'{os.path.basename(os.path.normpath(root))}:{role}'
  return folder_split(name, paths, labels, n_cls)
