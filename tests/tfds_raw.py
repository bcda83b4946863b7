"""Real TFDS builders prepared offline from tiny raw files in the original download formats.

The builders are the unmodified installed classes (`tfds.builder('cifar100')`,
`tfds.builder('oxford_flowers102')`) running their own `_split_generators` and
`_generate_examples`. Only the download is redirected: while `download_and_prepare` runs,
`tfds.download.DownloadManager.download_and_extract` and `.download` are patched to map each
URL the builder asks for to a file this module wrote under `<data_dir>/raw/`, and
`download_and_extract` then hands those files to the real `DownloadManager.extract`, so TFDS's
own extractor unpacks the `.tar.gz`/`.tgz` archives (into `<data_dir>/downloads/extracted/`)
and passes the `.mat` files through unextracted. Nothing is fetched, so no checksums are
computed or verified. Any URL not in the map raises instead of reaching the network.

Used by the tests (tests/ is on sys.path under pytest); it holds no tests itself.
"""

import contextlib
import importlib.resources
import importlib.util
import io
import os
import sys
import tarfile
from unittest import mock

import numpy as np
import scipy.io
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

# The default versions of the installed builders (tensorflow-datasets 4.9.x), the ones
# gps_jax.data.vtab expects.
CIFAR100_VERSION = '3.0.2'
OXFORD_FLOWERS102_VERSION = '2.1.1'

CIFAR100_URL = 'https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz'
FLOWERS_BASE_URL = 'https://www.robots.ox.ac.uk/~vgg/data/flowers/102/'
FLOWERS_URLS = {
  'images': FLOWERS_BASE_URL + '102flowers.tgz',
  'labels': FLOWERS_BASE_URL + 'imagelabels.mat',
  'setid': FLOWERS_BASE_URL + 'setid.mat',
}

# The label names of the original cifar-100-binary files, in label order.
CIFAR100_FINE_NAMES = (
  'apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus '
  'butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch '
  'crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo '
  'keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse '
  'mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy '
  'porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper '
  'snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television '
  'tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm'
).split()
CIFAR100_COARSE_NAMES = (
  'aquatic_mammals fish flowers food_containers fruit_and_vegetables '
  'household_electrical_devices household_furniture insects large_carnivores '
  'large_man-made_outdoor_things large_natural_outdoor_scenes large_omnivores_and_herbivores '
  'medium_mammals non-insect_invertebrates people reptiles small_mammals trees vehicles_1 '
  'vehicles_2'
).split()
# The superclass of each fine class, as in the original data (5 fine classes per superclass).
CIFAR100_FINE_TO_COARSE = np.array(
  [4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11, 6, 11, 5, 10, 7, 6, 13, 15, 3]
  + [15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5, 5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2]
  + [0, 17, 4, 18, 17, 10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13, 16]
  + [19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13],
  dtype=np.int64,
)

FLOWERS_SPLITS = ('train', 'validation', 'test')
# TFDS split name -> variable name in setid.mat.
_FLOWERS_SETID_KEYS = {'train': 'trnid', 'validation': 'valid', 'test': 'tstid'}
_TAR_MTIME = 1262304000  # fixed member time: the archives are byte-for-byte reproducible


def _as_url(url):
  return url.url if isinstance(url, tfds.download.Resource) else os.fspath(url)


def _map_urls(fn, tree):
  """Applies fn to every URL of a str / Resource / dict / list / tuple tree, keeping its form."""
  if isinstance(tree, dict):
    return {k: _map_urls(fn, v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return type(tree)(_map_urls(fn, v) for v in tree)
  return fn(tree)


@contextlib.contextmanager
def redirect_downloads(url_to_path):
  """Within the block every `DownloadManager` serves the given URLs from local files.

  `download(urls)` returns the local paths (same structure as `urls`); `download_and_extract`
  passes them to the real `DownloadManager.extract`, which picks the extraction method from
  the local file name, as it would from the downloaded one. Unknown URLs raise KeyError.
  """
  table = {os.fspath(url): os.fspath(path) for url, path in url_to_path.items()}

  def resolve(url):
    url = _as_url(url)
    if url not in table:
      raise KeyError(f'offline TFDS preparation: no local file for {url!r} (have {sorted(table)})')
    return tfds.core.Path(table[url])

  def download(self, url_or_urls):
    del self
    return _map_urls(resolve, url_or_urls)

  def download_and_extract(self, url_or_urls):
    return self.extract(download(self, url_or_urls))

  cls = tfds.download.DownloadManager
  with (
    mock.patch.object(cls, 'download', download),
    mock.patch.object(cls, 'download_and_extract', download_and_extract),
  ):
    yield


@contextlib.contextmanager
def importlib_resources_fallback():
  """Lends the stdlib `importlib.resources` as `importlib_resources` while it is not installed.

  tensorflow-datasets 4.9.x imports `importlib_resources` (in DatasetBuilder.code_path, reached
  by every download_and_prepare) but declares it only for Python < 3.9, so without the package
  preparing any dataset fails with ModuleNotFoundError (tensorflow/datasets#11212). The stdlib
  module has the one name used there (`abc.Traversable`). Nothing is changed when the package
  is installed; the sys.modules entry is removed again on exit (TFDS's lazy import may keep the
  module it resolved).
  """
  if importlib.util.find_spec('importlib_resources') is not None:
    yield
    return
  sys.modules['importlib_resources'] = importlib.resources
  try:
    yield
  finally:
    if sys.modules.get('importlib_resources') is importlib.resources:
      del sys.modules['importlib_resources']


def _prepare(name, data_dir, url_to_path):
  """Runs the real builder's download_and_prepare into data_dir with downloads redirected."""
  builder = tfds.builder(name, data_dir=data_dir)
  config = tfds.download.DownloadConfig(
    try_download_gcs=False,
    download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS,
  )
  with importlib_resources_fallback(), redirect_downloads(url_to_path):
    builder.download_and_prepare(
      download_dir=os.path.join(data_dir, 'downloads'), download_config=config
    )
  return builder


def _add_file(tar, name, data):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  info.mtime = _TAR_MTIME
  info.mode = 0o644
  tar.addfile(info, io.BytesIO(data))


def _add_dir(tar, name):
  info = tarfile.TarInfo(name)
  info.type = tarfile.DIRTYPE
  info.mtime = _TAR_MTIME
  info.mode = 0o755
  tar.addfile(info)


def _raw_dir(data_dir, name):
  path = os.path.join(data_dir, 'raw', name)
  os.makedirs(path, exist_ok=True)
  return path


def _cifar_split(rng, n):
  images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
  fine = rng.integers(0, 100, size=n).astype(np.int64)
  fine[: min(n, 2)] = [0, 99][: min(n, 2)]  # both ends of the label range
  return images, fine


def _cifar_records(images, fine):
  """cifar-100-binary records: coarse byte, fine byte, 1024 R, 1024 G, 1024 B (row-major)."""
  coarse = CIFAR100_FINE_TO_COARSE[fine]
  out = bytearray()
  for image, f, c in zip(images, fine, coarse):
    out += bytes([int(c), int(f)])
    out += np.ascontiguousarray(image.transpose(2, 0, 1)).tobytes()
  return bytes(out)


def write_cifar100_raw(raw_dir, *, num_train=60, num_test=20, seed=0):
  """Writes cifar-100-binary.tar.gz into raw_dir; returns (path, {split: (images, fine)})."""
  rng = np.random.default_rng(seed)
  data = {'train': _cifar_split(rng, num_train), 'test': _cifar_split(rng, num_test)}
  path = os.path.join(raw_dir, 'cifar-100-binary.tar.gz')
  with tarfile.open(path, 'w:gz') as tar:
    _add_dir(tar, 'cifar-100-binary')
    names = {'coarse': CIFAR100_COARSE_NAMES, 'fine': CIFAR100_FINE_NAMES}
    for kind in ('coarse', 'fine'):
      text = '\n'.join(names[kind]) + '\n'
      _add_file(tar, f'cifar-100-binary/{kind}_label_names.txt', text.encode())
    for split in ('train', 'test'):
      _add_file(tar, f'cifar-100-binary/{split}.bin', _cifar_records(*data[split]))
  return path, data


def prepare_cifar100(data_dir, *, num_train=60, num_test=20, seed=0):
  """Prepares the real `cifar100` builder into data_dir from tiny random raw files.

  Writes `<data_dir>/raw/cifar100/cifar-100-binary.tar.gz` (members `cifar-100-binary/
  {train,test}.bin` and `{coarse,fine}_label_names.txt`, with the real label names), then runs
  the builder's download_and_prepare into data_dir with the download redirected to it.

  Returns {'train': (images, fine_labels), 'test': (...)}: images uint8 (N, 32, 32, 3) HWC,
  fine labels int64 (N,), in file order. Example i of a split has TFDS id f'{split}_{i:05d}'
  (TFDS stores the examples shuffled); its coarse label is CIFAR100_FINE_TO_COARSE[fine].
  """
  data_dir = os.fspath(data_dir)
  path, data = write_cifar100_raw(
    _raw_dir(data_dir, 'cifar100'), num_train=num_train, num_test=num_test, seed=seed
  )
  _prepare('cifar100', data_dir, {CIFAR100_URL: path})
  return data


def _jpeg(rng, height, width):
  pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format='JPEG', quality=90)
  return buf.getvalue()


def write_oxford_flowers102_raw(raw_dir, *, num_train=12, num_val=6, num_test=6, seed=0):
  """Writes 102flowers.tgz, imagelabels.mat and setid.mat into raw_dir.

  Image ids 1..N are dealt to the splits in random order (as in the original, split
  membership comes from setid.mat only); mat labels are 1..102. Returns
  ({'images': tgz, 'labels': mat, 'setid': mat}, {split: [image ids]}, labels (N,) 1-based,
  {file_name: jpeg bytes}).
  """
  rng = np.random.default_rng(seed)
  counts = {'train': num_train, 'validation': num_val, 'test': num_test}
  total = sum(counts.values())
  order = rng.permutation(np.arange(1, total + 1))
  ids, start = {}, 0
  for split in FLOWERS_SPLITS:
    ids[split] = [int(i) for i in order[start : start + counts[split]]]
    start += counts[split]
  labels = rng.integers(1, 103, size=total).astype(np.uint8)
  labels[: min(total, 2)] = [1, 102][: min(total, 2)]  # both ends of the label range

  jpegs = {}
  for image_id in range(1, total + 1):
    height, width = (30, 40) if image_id % 2 else (40, 30)  # two orientations
    jpegs['image_%05d.jpg' % image_id] = _jpeg(rng, height, width)

  paths = {
    'images': os.path.join(raw_dir, '102flowers.tgz'),
    'labels': os.path.join(raw_dir, 'imagelabels.mat'),
    'setid': os.path.join(raw_dir, 'setid.mat'),
  }
  with tarfile.open(paths['images'], 'w:gz') as tar:
    _add_dir(tar, 'jpg')
    for file_name, data in jpegs.items():
      _add_file(tar, f'jpg/{file_name}', data)
  # Same variables and shapes as the originals: labels (1, 8189) uint8, ids (1, n) uint16.
  scipy.io.savemat(paths['labels'], {'labels': labels.reshape(1, -1)})
  setid = {_FLOWERS_SETID_KEYS[s]: np.array(ids[s], np.uint16).reshape(1, -1) for s in ids}
  scipy.io.savemat(paths['setid'], setid)
  return paths, ids, labels, jpegs


def prepare_oxford_flowers102(data_dir, *, num_train=12, num_val=6, num_test=6, seed=0):
  """Prepares the real `oxford_flowers102` builder into data_dir from tiny random raw files.

  Writes `<data_dir>/raw/oxford_flowers102/{102flowers.tgz,imagelabels.mat,setid.mat}`
  (random JPEGs of 30x40 and 40x30 pixels under `jpg/`), then runs the builder's
  download_and_prepare into data_dir with the downloads redirected to them.

  Returns {'train': {file_name: label}, 'validation': {...}, 'test': {...}} with 0-based
  labels (mat label - 1, as TFDS stores them), plus two keys that are not splits:
  'jpeg_bytes': {file_name: the written JPEG bytes} and 'images': {file_name: those bytes
  decoded with tf.io.decode_jpeg, uint8 (H, W, 3)}. FLOWERS_SPLITS names the split keys.
  """
  data_dir = os.fspath(data_dir)
  paths, ids, labels, jpegs = write_oxford_flowers102_raw(
    _raw_dir(data_dir, 'oxford_flowers102'),
    num_train=num_train,
    num_val=num_val,
    num_test=num_test,
    seed=seed,
  )
  _prepare('oxford_flowers102', data_dir, {FLOWERS_URLS[k]: paths[k] for k in FLOWERS_URLS})
  out = {
    split: {'image_%05d.jpg' % i: int(labels[i - 1]) - 1 for i in ids[split]}
    for split in FLOWERS_SPLITS
  }
  out['jpeg_bytes'] = jpegs
  out['images'] = {name: tf.io.decode_jpeg(data).numpy() for name, data in jpegs.items()}
  return out
