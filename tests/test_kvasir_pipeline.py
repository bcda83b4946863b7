"""Kvasir-SEG through the tf.data pipeline: source 'kvasir' of gps_jax.data.splits.

References are independent of the pipeline: masks and images of
gps_jax.data.kvasir.load_pair (PIL), stems of kvasir.split_stems, and exact
integer nearest-neighbour indices.
"""

import os

import numpy as np
import pytest
import tensorflow as tf  # Imported at collection so no test pays the import.
from PIL import Image

from gps_jax.config_defaults import experiment_config
from gps_jax.data import input_pipeline as ip
from gps_jax.data import kvasir, kvasir_split, splits
from gps_jax.errors import UserError

MEAN = (0.4, 0.5, 0.6)
STD = (0.2, 0.25, 0.3)


def data_config(root, **kw):
  data = experiment_config().data
  data.source, data.data_dir = 'kvasir', root
  data.update(kw)
  return data


def stem_of(path):
  return os.path.splitext(os.path.basename(path))[0]


def split_stem_list(split):
  return [stem_of(ex['image'].decode()) for ex in split.dataset.as_numpy_iterator()]


def eval_pass(split, label_size, image_size=8, batch_size=8, **kw):
  _, eval_fn = ip.recipe_image_fns('resize', image_size, MEAN, STD)
  kw.update(batch_size=batch_size, image_fn=eval_fn, image_size=image_size, label_size=label_size)
  return list(ip.eval_batches(split, **kw))


def real(batches, key):
  return np.concatenate([b[key][b['mask']] for b in batches])


def file_mask(root, stem):
  """The thresholded mask at file resolution, decoded by PIL."""
  grey = np.asarray(Image.open(os.path.join(root, 'masks', stem + '.jpg')).convert('L'))
  return grey >= kvasir.MASK_THRESHOLD


def exact_nearest(n_in, n_out):
  """Source index of each output pixel: floor((i + 1/2) n_in / n_out), in integers."""
  return (2 * np.arange(n_out) + 1) * n_in // (2 * n_out)


def is_tie(n_in, n_out):
  """Output pixels whose sample point lies exactly on a source pixel boundary."""
  return (2 * np.arange(n_out) + 1) * n_in % (2 * n_out) == 0


@pytest.fixture(scope='module')
def square(tmp_path_factory):
  """20 pairs of 64x64: splits of 16 / 2 / 2."""
  root = str(tmp_path_factory.mktemp('square') / 'Kvasir-SEG')
  return root, kvasir.write_synthetic(root, 20, seed=7, image_size=(64, 64))


@pytest.fixture(scope='module')
def oblong(tmp_path_factory):
  """10 pairs of 96x128 (H x W), the default synthetic size."""
  root = str(tmp_path_factory.mktemp('oblong') / 'Kvasir-SEG')
  return root, kvasir.write_synthetic(root, 10, seed=3)


# ----------------------------------------------------------------------------- masks, images


def test_masks_equal_load_pair_at_dyadic_sizes(oblong):
  """96x128 masks to sides whose scales are dyadic fractions: PIL and TF agree bit for bit."""
  root, _ = oblong
  split = splits.open_split(data_config(root), 'trainval')
  stems = split_stem_list(split)
  assert len(stems) == 9
  for size in (16, 32, 64, 128, 256):  # below, between and above 96 and 128
    masks = real(eval_pass(split, size), 'label')
    assert masks.shape == (9, size, size) and masks.dtype == np.uint8
    assert set(np.unique(masks)) == {0, 1}
    for stem, mask in zip(stems, masks):
      np.testing.assert_array_equal(mask, kvasir.load_pair(root, stem, size)[1], err_msg=stem)


def test_masks_at_tie_sizes_differ_from_pil_only_on_boundary_samples(oblong):
  """Scales 96/40 and 128/40 are inexact: PIL then differs on the rows and columns of ties.

  Where (i + 1/2) * n_in / n_out is an integer the sample point falls on a pixel
  boundary; PIL sums the inexact double scale pixel by pixel and lands just
  below it (the pixel before), TF computes it in one float32 product and here
  lands on it, like the exact rule.
  """
  root, _ = oblong
  split = splits.open_split(data_config(root), 'trainval')
  stems = split_stem_list(split)
  size = 40
  masks = real(eval_pass(split, size), 'label')
  rows, cols = exact_nearest(96, size), exact_nearest(128, size)
  tie = is_tie(96, size)[:, None] | is_tie(128, size)[None, :]
  assert tie.any()
  differs = np.zeros((size, size), bool)
  for stem, mask in zip(stems, masks):
    np.testing.assert_array_equal(mask, file_mask(root, stem)[np.ix_(rows, cols)], err_msg=stem)
    differs |= mask != kvasir.load_pair(root, stem, size)[1]
  assert differs.any()  # the difference is real ...
  assert not (differs & ~tie).any()  # ... and only where a sample point is a tie


def test_image_close_to_load_pair_without_resize_and_mask_equal(square):
  """At the file size the image is only normalised; TF's default JPEG DCT moves pixels by <= 3."""
  root, _ = square
  split = splits.open_split(data_config(root), 'test')
  stems = split_stem_list(split)
  batches = eval_pass(split, 64, image_size=64)
  images, masks = real(batches, 'image'), real(batches, 'label')
  assert images.shape == (2, 64, 64, 3) and images.dtype == np.float32
  for stem, image, mask in zip(stems, images, masks):
    x, y = kvasir.load_pair(root, stem, 64)
    want = (x - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    np.testing.assert_allclose(image, want, atol=3.01 / 255 / min(STD))
    assert np.abs((image - want) * np.asarray(STD)).mean() < 1.5 / 255  # in grey levels
    np.testing.assert_array_equal(mask, y)


def test_mask_decoding_equals_pil_for_colour_jpeg_and_png(tmp_path):
  """Colour JPEG masks (as distributed) and PNG masks threshold exactly like PIL's 'L'."""
  rng = np.random.default_rng(0)
  for i in range(4):
    _, blob, _ = kvasir.synthetic_example(1, i, (40, 56))
    rgb = blob[..., None] * np.array([250, 235, 255]) + rng.integers(0, 60, (40, 56, 3))
    path = str(tmp_path / f'm{i}.jpg')
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(path, 'JPEG', quality=70)
    want = np.asarray(Image.open(path).convert('L')) >= kvasir.MASK_THRESHOLD
    got = kvasir_split.decode_kvasir_mask(tf.constant(path)).numpy()
    assert got.dtype == np.uint8 and got.shape == (40, 56)
    np.testing.assert_array_equal(got, want)
  path = str(tmp_path / 'grey.png')
  Image.fromarray(np.array([[0, 127, 128, 255]] * 2, np.uint8)).save(path)
  np.testing.assert_array_equal(kvasir_split.decode_kvasir_mask(tf.constant(path)), [[0, 0, 1, 1]] * 2)


# ----------------------------------------------------------------------------- open_split


def test_open_split_is_the_seeded_80_10_10_split(square):
  root, stems = square
  assert kvasir.list_pairs(root) == stems
  data = data_config(root, split_seed=3)
  want = kvasir.split_stems(stems, seed=3)
  for role in ('train', 'val', 'test'):
    split = splits.open_split(data, role)
    assert split.name == f'Kvasir-SEG:{role}'
    assert split.num_classes == 0 and split.decode_label is not None
    assert split.num_examples == {'train': 16, 'val': 2, 'test': 2}[role]
    assert split_stem_list(split) == want[role]
    labels = [ex['label'].decode() for ex in split.dataset.as_numpy_iterator()]
    assert labels == [os.path.join(root, 'masks', s + '.jpg') for s in want[role]]
  trainval = splits.open_split(data, 'trainval')
  assert split_stem_list(trainval) == sorted(want['train'] + want['val'])
  assert split_stem_list(splits.open_split(data_config(root), 'test')) != want['test']
  image_paths, mask_paths = kvasir.split_paths(root, 'trainval', seed=3)
  assert [stem_of(p) for p in image_paths] == [stem_of(p) for p in mask_paths]
  assert [stem_of(p) for p in image_paths] == sorted(want['train'] + want['val'])
  with pytest.raises(UserError, match="'train800'"):
    splits.open_split(data, 'train800')
  with pytest.raises(UserError, match="unknown Kvasir-SEG split 'dev'"):
    kvasir.split_paths(root, 'dev')


def test_open_split_needs_data_dir():
  with pytest.raises(UserError) as e:
    splits.open_split(data_config(''), 'train')
  assert str(e.value) == (
    'config.data.data_dir must name the Kvasir-SEG folder (images/ and masks/) for source "kvasir"'
  )


def test_mask_of_another_size_or_unreadable_is_a_user_error_naming_it(tmp_path):
  root = str(tmp_path / 'Kvasir-SEG')
  kvasir.write_synthetic(root, 10, seed=1, image_size=(24, 32))
  stem = kvasir.split_stems(kvasir.list_pairs(root))['test'][0]
  bad = os.path.join(root, 'masks', stem + '.jpg')
  Image.fromarray(np.zeros((24, 24), np.uint8)).save(bad, 'JPEG')
  splits.open_split(data_config(root), 'train')  # only the split's own pairs are checked
  with pytest.raises(UserError) as e:
    splits.open_split(data_config(root), 'test')
  assert str(e.value).startswith(f'{bad}: mask is 24x24 but its image ')
  assert str(e.value).endswith('.jpg is 32x24')
  with open(bad, 'wb') as f:
    f.write(b'no image here')
  with pytest.raises(UserError) as e:
    splits.open_split(data_config(root), 'test')
  assert str(e.value).startswith(f'{bad}: cannot read image file')


def test_truncated_mask_is_named_by_the_pipeline(tmp_path):
  """A mask whose header is intact passes open_split; decoding it fails, naming the file."""
  root = str(tmp_path / 'Kvasir-SEG')
  kvasir.write_synthetic(root, 10, seed=2, image_size=(24, 24))
  stems = kvasir.split_stems(kvasir.list_pairs(root))['train']
  bad = os.path.join(root, 'masks', stems[-1] + '.jpg')
  data = open(bad, 'rb').read()
  with open(bad, 'wb') as f:  # cut a few bytes into the scan, after the headers
    f.write(data[: data.index(b'\xff\xda') + 20])
  split = splits.open_split(data_config(root), 'train')
  assert split.find_bad_example() is not None
  _, eval_fn = ip.recipe_image_fns('resize', 8, MEAN, STD)
  batches = ip.eval_batches(split, batch_size=4, image_fn=eval_fn, image_size=8, label_size=8)
  assert next(batches)['mask'].all()  # batches before the bad file still come
  with pytest.raises(ValueError) as e:
    next(batches)
  assert str(e.value).startswith(f'{bad}: cannot decode image file')
  train_fn, _ = ip.recipe_image_fns('resize', 8, MEAN, STD)
  batches = ip.train_batches(split, batch_size=8, image_fn=train_fn, seed=0, label_size=8)
  with pytest.raises(ValueError) as e:
    next(batches)
  assert str(e.value).startswith(bad)


# ----------------------------------------------------------------------------- batches


def test_eval_pads_with_zero_masks_and_covers_every_example_once(square):
  root, _ = square
  split = splits.open_split(data_config(root), 'trainval')  # 18 examples
  stems = split_stem_list(split)
  whole = eval_pass(split, 16, batch_size=8)
  slices = [eval_pass(split, 16, batch_size=8, process_index=p, process_count=2) for p in (0, 1)]
  for batches in (whole, *slices):
    assert len(batches) == ip.num_eval_batches(18, 8) == 3
    for b in batches:
      assert b['label'].shape == (len(b['mask']), 16, 16) and b['label'].dtype == np.uint8
      assert not b['label'][~b['mask']].any() and not b['image'][~b['mask']].any()
  np.testing.assert_array_equal(np.concatenate([b['mask'] for b in whole]), np.arange(24) < 18)
  masks = real(whole, 'label')
  for stem, mask in zip(stems, masks):
    np.testing.assert_array_equal(mask, kvasir.load_pair(root, stem, 16)[1])
  for batch, *parts in zip(whole, *slices):  # the processes' slices make the global batch
    for key in ('image', 'label', 'mask'):
      np.testing.assert_array_equal(batch[key], np.concatenate([part[key] for part in parts]))


def train(split, *, process_index=0, process_count=1, label_size=16, steps=3, one_pass=False):
  train_fn, _ = ip.recipe_image_fns('resize', 8, MEAN, STD)
  kw = dict(batch_size=6, image_fn=train_fn, seed=4, label_size=label_size)
  kw.update(process_index=process_index, process_count=process_count)
  if one_pass:
    return list(ip.one_pass_batches(split, **kw))
  batches = ip.train_batches(split, **kw)
  return [next(batches) for _ in range(steps)]


def test_train_masks_follow_their_images_and_processes_slice_the_global_batch(square):
  root, _ = square
  split = splits.open_split(data_config(root), 'train')  # 16 examples: 2 steps of 6 an epoch
  stems = split_stem_list(split)
  eval_images = real(eval_pass(split, 16), 'image')
  batches = train(split, steps=3)  # into the second epoch
  for b in batches:
    assert b['image'].shape == (6, 8, 8, 3) and b['label'].shape == (6, 16, 16)
    assert b['label'].dtype == np.uint8
    for image, mask in zip(b['image'], b['label']):
      (match,) = np.nonzero((eval_images == image).all(axis=(1, 2, 3)))[0]  # resize: no aug
      np.testing.assert_array_equal(mask, kvasir.load_pair(root, stems[match], 16)[1])
  slices = [train(split, process_index=p, process_count=2, steps=3) for p in (0, 1)]
  for whole, *parts in zip(batches, *slices):
    assert parts[0]['label'].shape == (3, 16, 16)
    for key in ('image', 'label'):
      np.testing.assert_array_equal(whole[key], np.concatenate([part[key] for part in parts]))


def test_one_pass_is_the_first_epoch_of_train_batches(square):
  root, _ = square
  split = splits.open_split(data_config(root), 'train')
  first = train(split, steps=4)
  one_pass = train(split, one_pass=True)
  assert len(one_pass) == ip.steps_per_epoch(16, 6) == 2  # the last 4 examples dropped
  for a, b in zip(one_pass, first):
    for key in ('image', 'label'):
      np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(first[2]['label'], first[0]['label'])  # epoch 2 is reshuffled
  for p in (0, 1):  # per process too: the slices of the same batches
    part = train(split, process_index=p, process_count=2, one_pass=True)
    assert len(part) == 2
    for a, b in zip(part, one_pass):
      np.testing.assert_array_equal(a['label'], b['label'][3 * p : 3 * p + 3])
  images = np.random.default_rng(0).integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
  classes = splits.memory_split('c', images, np.arange(10) % 3, 3)  # classification too
  one_pass = train(classes, label_size=0, one_pass=True)
  assert len(one_pass) == 1 and one_pass[0]['label'].dtype == np.int32
  np.testing.assert_array_equal(one_pass[0]['label'], train(classes, label_size=0)[0]['label'])


def test_segmentation_needs_label_size_and_two_views_refuse_it(square):
  root, _ = square
  split = splits.open_split(data_config(root), 'train')
  for call in (
    lambda: train(split, label_size=0),
    lambda: train(split, label_size=0, one_pass=True),
    lambda: eval_pass(split, 0),
  ):
    with pytest.raises(ValueError, match='label_size=0'):
      call()
  with pytest.raises(ValueError) as e:
    ip.two_view_batches(split, batch_size=4, image_size=8, mean=MEAN, std=STD, seed=0)
  assert 'two-view SupCon batches need class labels' in str(e.value)
  assert '(Kvasir-SEG:train)' in str(e.value) and 'config.gps.score=task_loss' in str(e.value)


def test_task_of_and_num_classes():
  data = data_config('/nowhere')
  assert splits.task_of(data) == 'segmentation' and splits.num_classes(data) == 0
  data.num_classes = 2  # wins, as for every source
  assert splits.num_classes(data) == 2
  for source, name, classes in (('vtab', 'cifar100', 100), ('memory', 'mnist_5k', 10)):
    data = experiment_config().data
    data.source, data.name = source, name
    assert splits.task_of(data) == 'classification' and splits.num_classes(data) == classes
  assert 'kvasir' in splits.SOURCES and splits.TASKS == {'kvasir': 'segmentation'}
