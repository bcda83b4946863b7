"""The real cifar100 / oxford_flowers102 TFDS builders, prepared offline by tests/tfds_raw.py,
read back with plain tfds.load / builder.as_dataset."""

import importlib.resources
import os
import sys
import tarfile

import numpy as np
import pytest
import scipy.io
import tensorflow as tf
import tensorflow_datasets as tfds

import tfds_raw

_DM = tfds.download.DownloadManager
_ORIGINAL_METHODS = (_DM.download, _DM.download_and_extract, _DM.extract)


@pytest.fixture(scope='module')
def cifar(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('cifar_data'))
  return data_dir, tfds_raw.prepare_cifar100(data_dir)


@pytest.fixture(scope='module')
def flowers(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('flowers_data'))
  return data_dir, tfds_raw.prepare_oxford_flowers102(data_dir)


def _load(name, data_dir, split, **kwargs):
  ds = tfds.load(name, data_dir=data_dir, split=split, download=False, **kwargs)
  return list(tfds.as_numpy(ds))


def test_cifar100_raw_files_are_cifar_100_binary(cifar):
  data_dir, written = cifar
  path = os.path.join(data_dir, 'raw', 'cifar100', 'cifar-100-binary.tar.gz')
  with tarfile.open(path, 'r:gz') as tar:
    members = {m.name: m for m in tar.getmembers() if m.isfile()}
    assert sorted(members) == [
      'cifar-100-binary/coarse_label_names.txt',
      'cifar-100-binary/fine_label_names.txt',
      'cifar-100-binary/test.bin',
      'cifar-100-binary/train.bin',
    ]
    train = tar.extractfile(members['cifar-100-binary/train.bin']).read()
    fine_names = tar.extractfile(members['cifar-100-binary/fine_label_names.txt']).read()
  images, fine = written['train']
  assert images.shape == (60, 32, 32, 3) and images.dtype == np.uint8
  assert fine.shape == (60,) and fine.dtype == np.int64
  assert written['test'][0].shape == (20, 32, 32, 3)
  assert len(train) == 60 * (2 + 3072)
  # Record 1: coarse byte, fine byte, then the red plane row by row, green, blue.
  record = np.frombuffer(train, np.uint8)[3074 : 2 * 3074]
  assert record[0] == tfds_raw.CIFAR100_FINE_TO_COARSE[fine[1]] and record[1] == fine[1]
  np.testing.assert_array_equal(record[2:1026].reshape(32, 32), images[1, :, :, 0])
  np.testing.assert_array_equal(record[2050:].reshape(32, 32), images[1, :, :, 2])
  assert fine_names.decode().split('\n')[:2] == ['apple', 'aquarium_fish']
  assert len(tfds_raw.CIFAR100_FINE_NAMES) == 100 and len(tfds_raw.CIFAR100_COARSE_NAMES) == 20
  np.testing.assert_array_equal(np.bincount(tfds_raw.CIFAR100_FINE_TO_COARSE), [5] * 20)


def test_cifar100_builder_info(cifar):
  data_dir, _ = cifar
  builder = tfds.builder('cifar100', data_dir=data_dir)
  assert str(builder.info.version) == tfds_raw.CIFAR100_VERSION == '3.0.2'
  assert builder.info.version == tfds.builder_cls('cifar100').VERSION
  assert builder.info.splits['train'].num_examples == 60
  assert builder.info.splits['test'].num_examples == 20
  assert set(builder.info.splits) == {'train', 'test'}
  # The builder took the class names from the label files in the archive.
  assert builder.info.features['label'].names == tfds_raw.CIFAR100_FINE_NAMES
  assert builder.info.features['coarse_label'].names == tfds_raw.CIFAR100_COARSE_NAMES
  assert builder.info.supervised_keys == ('image', 'label')


@pytest.mark.parametrize('split', ['train', 'test'])
def test_cifar100_images_and_labels_round_trip(cifar, split):
  data_dir, written = cifar
  images, fine = written[split]
  examples = _load('cifar100', data_dir, split)
  assert len(examples) == len(fine)
  seen = []
  for ex in examples:
    prefix, index = ex['id'].decode().split('_')
    assert prefix == split
    i = int(index)
    seen.append(i)
    assert ex['image'].dtype == np.uint8 and ex['image'].shape == (32, 32, 3)
    np.testing.assert_array_equal(ex['image'], images[i])  # exact pixels, HWC
    assert ex['label'] == fine[i]
    assert ex['coarse_label'] == tfds_raw.CIFAR100_FINE_TO_COARSE[fine[i]]
  assert sorted(seen) == list(range(len(fine)))
  # As supervised pairs too, through the builder.
  builder = tfds.builder('cifar100', data_dir=data_dir)
  pairs = list(tfds.as_numpy(builder.as_dataset(split=split, as_supervised=True)))
  assert sorted(int(label) for _, label in pairs) == sorted(fine.tolist())


def test_flowers_raw_files_match_originals_layout(flowers):
  data_dir, written = flowers
  raw = os.path.join(data_dir, 'raw', 'oxford_flowers102')
  labels = scipy.io.loadmat(os.path.join(raw, 'imagelabels.mat'))['labels']
  setid = scipy.io.loadmat(os.path.join(raw, 'setid.mat'))
  assert labels.shape == (1, 24) and labels.min() >= 1 and labels.max() <= 102
  assert {1, 102} <= set(labels[0].tolist())
  for key, n in (('trnid', 12), ('valid', 6), ('tstid', 6)):
    assert setid[key].shape == (1, n)
  ids = np.concatenate([setid[k][0] for k in ('trnid', 'valid', 'tstid')])
  assert sorted(ids.tolist()) == list(range(1, 25))
  with tarfile.open(os.path.join(raw, '102flowers.tgz'), 'r:gz') as tar:
    files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
  assert sorted(files) == ['jpg/image_%05d.jpg' % i for i in range(1, 25)]
  for name, data in written['jpeg_bytes'].items():
    assert files['jpg/' + name] == data
  assert sorted(k for k in written if k in tfds_raw.FLOWERS_SPLITS) == sorted(
    tfds_raw.FLOWERS_SPLITS
  )


def test_flowers_builder_info(flowers):
  data_dir, _ = flowers
  builder = tfds.builder('oxford_flowers102', data_dir=data_dir)
  assert str(builder.info.version) == tfds_raw.OXFORD_FLOWERS102_VERSION == '2.1.1'
  assert builder.info.version == tfds.builder_cls('oxford_flowers102').VERSION
  splits = builder.info.splits
  assert {s: splits[s].num_examples for s in splits} == {'train': 12, 'validation': 6, 'test': 6}
  assert builder.info.features['label'].num_classes == 102


@pytest.mark.parametrize('split', ['train', 'validation', 'test'])
def test_flowers_images_and_labels_round_trip(flowers, split):
  data_dir, written = flowers
  expected = written[split]
  examples = _load('oxford_flowers102', data_dir, split)
  assert len(examples) == len(expected)
  got = {ex['file_name'].decode(): ex for ex in examples}
  assert set(got) == set(expected)
  for name, ex in got.items():
    assert ex['label'] == expected[name]
    assert 0 <= ex['label'] < 102
    decoded = tf.io.decode_jpeg(written['jpeg_bytes'][name]).numpy()
    assert ex['image'].shape == decoded.shape and ex['image'].shape[2] == 3
    np.testing.assert_array_equal(ex['image'], decoded)
    np.testing.assert_array_equal(ex['image'], written['images'][name])
  # TFDS stores the JPEG files as they are: the undecoded bytes are the ones written.
  builder = tfds.builder('oxford_flowers102', data_dir=data_dir)
  raw = builder.as_dataset(split=split, decoders={'image': tfds.decode.SkipDecoding()})
  for ex in tfds.as_numpy(raw):
    assert ex['image'] == written['jpeg_bytes'][ex['file_name'].decode()]


def test_split_slicing(cifar, flowers):
  data_dir, written = cifar
  full = [ex['id'] for ex in _load('cifar100', data_dir, 'train')]
  head = _load('cifar100', data_dir, 'train[:10]')
  assert [ex['id'] for ex in head] == full[:10]
  tail = _load('cifar100', data_dir, 'test[-5:]')
  assert len(tail) == 5
  assert len(_load('cifar100', data_dir, 'train[50%:]')) == 30
  images, fine = written['train']
  for ex in head:
    i = int(ex['id'].decode().split('_')[1])
    np.testing.assert_array_equal(ex['image'], images[i])
    assert ex['label'] == fine[i]
  data_dir, written = flowers
  half = _load('oxford_flowers102', data_dir, 'validation[:50%]')
  assert len(half) == 3
  assert {ex['file_name'].decode() for ex in half} <= set(written['validation'])
  both = _load('oxford_flowers102', data_dir, 'train[:2]+test[:1]')
  assert len(both) == 3


def test_repeated_preparation_is_independent_and_leaves_no_patch(tmp_path):
  a = tfds_raw.prepare_cifar100(tmp_path / 'a', num_train=3, num_test=2, seed=1)
  b = tfds_raw.prepare_cifar100(tmp_path / 'b', num_train=4, num_test=1, seed=2)
  f = tfds_raw.prepare_oxford_flowers102(tmp_path / 'f', num_train=2, num_val=1, num_test=1)
  assert (_DM.download, _DM.download_and_extract, _DM.extract) == _ORIGINAL_METHODS
  # The stand-in for a missing importlib_resources is gone again.
  assert sys.modules.get('importlib_resources') is not importlib.resources
  assert a['train'][0].shape == (3, 32, 32, 3) and b['train'][0].shape == (4, 32, 32, 3)
  assert not np.array_equal(a['train'][0][:3], b['train'][0][:3])
  for name, d, n in (('cifar100', 'a', 3), ('cifar100', 'b', 4), ('oxford_flowers102', 'f', 2)):
    info = tfds.builder(name, data_dir=str(tmp_path / d)).info
    assert info.splits['train'].num_examples == n
  assert sum(len(f[s]) for s in tfds_raw.FLOWERS_SPLITS) == 4
  ex = _load('cifar100', str(tmp_path / 'b'), 'test')
  np.testing.assert_array_equal(ex[0]['image'], b['test'][0][0])
  # Everything stays inside each data_dir.
  assert sorted(os.listdir(tmp_path)) == ['a', 'b', 'f']
  assert sorted(os.listdir(tmp_path / 'a')) == ['cifar100', 'downloads', 'raw']
  assert sorted(os.listdir(tmp_path / 'f')) == ['downloads', 'oxford_flowers102', 'raw']


def test_redirect_serves_only_known_urls(tmp_path):
  local = tmp_path / 'x.txt'
  local.write_text('hello')
  dm = tfds.download.DownloadManager(download_dir=tmp_path / 'dl')
  with tfds_raw.redirect_downloads({'https://example.invalid/x.txt': local}):
    got = dm.download({'a': 'https://example.invalid/x.txt'})
    assert os.fspath(got['a']) == os.fspath(local)
    assert os.fspath(dm.download_and_extract('https://example.invalid/x.txt')) == str(local)
    with pytest.raises(KeyError, match='no local file'):
      dm.download_and_extract('https://example.invalid/other.tar.gz')
  assert (_DM.download, _DM.download_and_extract, _DM.extract) == _ORIGINAL_METHODS


# ----------------------------------------------------------------------------- through gps_jax


def _data(source, name, data_dir):
  from gps_jax.config_defaults import experiment_config

  c = experiment_config()
  c.data.source, c.data.name, c.data.data_dir = source, name, data_dir
  return c.data


def _eval_pairs(split, image_size, image_fn):
  from gps_jax.data import input_pipeline as pipeline

  pairs = []
  for b in pipeline.eval_batches(split, batch_size=8, image_fn=image_fn, image_size=image_size):
    pairs += [(img, int(y)) for img, y, m in zip(b['image'], b['label'], b['mask']) if m]
  return pairs


def _keyed(pairs):
  """{image bytes: label}: order-free comparison (TFDS stores examples shuffled)."""
  pairs = list(pairs)
  out = {np.asarray(img, np.float32).tobytes(): y for img, y in pairs}
  assert len(out) == len(pairs)  # random images: no two alike
  return out


@pytest.mark.parametrize(
  'source,name,role,written',
  [
    # The tiny train split is too short for the absolute slices (train[:45000],
    # train[:800], ...): TFDS refuses those, see the next test.
    ('tfds', 'cifar100', 'trainval', 'train'),
    ('tfds', 'cifar100', 'test', 'test'),
    ('vtab', 'cifar100', 'test', 'test'),
  ],
)
def test_cifar100_reads_through_splits_and_pipeline(cifar, source, name, role, written):
  from gps_jax.data import input_pipeline as pipeline
  from gps_jax.data import splits

  data_dir, data = cifar
  split = splits.open_split(_data(source, name, data_dir), role)
  images, labels = data[written]
  assert split.num_examples == len(labels) and split.num_classes == 100
  # 32x32 is kept as is by the 'resize' recipe; mean 0, std 1 leaves x / 255.
  _, eval_fn = pipeline.recipe_image_fns('resize', 32, (0.0,) * 3, (1.0,) * 3)
  got = _keyed((np.round(img * 255), y) for img, y in _eval_pairs(split, 32, eval_fn))
  want = _keyed((img.astype(np.float32), int(y)) for img, y in zip(images, labels))
  assert got == want
  # One training epoch: whole batches of distinct written examples.
  train_fn, _ = pipeline.recipe_image_fns('resize', 32, (0.0,) * 3, (1.0,) * 3)
  it = pipeline.train_batches(split, batch_size=8, image_fn=train_fn, seed=0)
  epoch = [next(it) for _ in range(pipeline.steps_per_epoch(split.num_examples, 8))]
  seen = _keyed(
    (np.round(img * 255), int(y)) for b in epoch for img, y in zip(b['image'], b['label'])
  )
  assert len(seen) == (len(labels) // 8) * 8
  assert all(want[k] == y for k, y in seen.items())


def test_a_slice_beyond_the_prepared_split_is_a_clear_error(cifar):
  """train[45000:] (CIFAR-100's val) of a 60-example train split: named at open time."""
  from gps_jax.data import splits

  with pytest.raises(ValueError, match=r'cifar100:train\[45000:\]: cannot read split .* 60'):
    splits.open_split(_data('tfds', 'cifar100', cifar[0]), 'val')


@pytest.mark.parametrize(
  'source,name,role,written',
  [
    ('tfds', 'oxford_flowers', 'trainval', ('train', 'validation')),
    ('tfds', 'oxford_flowers', 'val', ('validation',)),
    ('tfds', 'oxford_flowers', 'test', ('test',)),
    ('vtab', 'oxford_flowers102', 'test', ('test',)),
  ],
)
def test_flowers_reads_through_splits_and_pipeline(flowers, source, name, role, written):
  from gps_jax.data import input_pipeline as pipeline
  from gps_jax.data import splits

  data_dir, data = flowers
  split = splits.open_split(_data(source, name, data_dir), role)
  files = {f: y for s in written for f, y in data[s].items()}
  assert split.num_examples == len(files) and split.num_classes == 102
  for recipe in ('resize', 'fgvc'):
    _, eval_fn = pipeline.recipe_image_fns(recipe, 16, (0.5,) * 3, (0.5,) * 3, resize_size=20)
    got = _keyed(_eval_pairs(split, 16, eval_fn))
    # Independent expectation: the same transform of each written JPEG, decoded here.
    want = _keyed((eval_fn(tf.constant(data['images'][f])).numpy(), y) for f, y in files.items())
    assert got == want, recipe
