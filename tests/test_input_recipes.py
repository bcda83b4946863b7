"""The image recipes of recipe_image_fns and their augmentation seeds: 'fgvc' train crops are
deterministic per seed and stay in the normalised range, 'fgvc' eval is the normalised
fgvc_eval_image, 'resize' is preprocess; augmentation differs per example and per epoch, and
the two views of selection batches differ per example."""

import numpy as np
import pytest
import tensorflow as tf  # Imported at collection so no test pays the import.
from pipeline_refs import MEAN, STD, S, fgvc_fns, noise_images, split_of

from gps_jax.data import input_pipeline as ip
from gps_jax.data.fgvc_augment import fgvc_eval_image
from gps_jax.data.pipeline import preprocess


# ----------------------------------------------------------------------------- recipes


def test_fgvc_train_recipe_shape_and_determinism():
  train_fn, _ = fgvc_fns()
  image = tf.constant(noise_images(1, 16, 24)[0])
  seed = tf.constant([4, 5], tf.int64)
  out = train_fn(image, seed).numpy()
  assert out.shape == (S, S, 3) and out.dtype == np.float32
  np.testing.assert_array_equal(out, train_fn(image, seed).numpy())
  assert not np.allclose(out, train_fn(image, tf.constant([4, 6], tf.int64)).numpy())
  # Normalised [0, 1] pixels: within [(0 - mean) / std, (1 - mean) / std].
  lo, hi = -np.array(MEAN) / STD, (1 - np.array(MEAN)) / STD
  assert np.all(out >= lo - 1e-6) and np.all(out <= hi + 1e-6)
  # A constant image stays constant through crop and flip: ((0.2, 0.4, 0.6) - mean) / std.
  flat = tf.constant(np.broadcast_to(np.uint8([51, 102, 153]), (16, 24, 3)))
  np.testing.assert_allclose(
    train_fn(flat, seed), np.broadcast_to([0.2, 0.8, 0.15], out.shape), atol=1e-5
  )


def test_fgvc_train_recipe_through_the_pipeline_depends_on_the_seed():
  train_fn, _ = fgvc_fns()
  split = split_of(noise_images(8))

  def first(seed):
    return next(ip.train_batches(split, batch_size=8, image_fn=train_fn, seed=seed))

  a, b, c = first(0), first(0), first(1)
  assert a['image'].shape == (8, S, S, 3) and a['image'].dtype == np.float32
  np.testing.assert_array_equal(a['image'], b['image'])
  np.testing.assert_array_equal(a['label'], b['label'])
  order = np.argsort(a['label']), np.argsort(c['label'])
  assert not np.allclose(a['image'][order[0]], c['image'][order[1]])


@pytest.mark.parametrize('resize_size', [None, 12])
def test_fgvc_eval_recipe_is_normalised_fgvc_eval_image(resize_size):
  _, eval_fn = fgvc_fns(resize_size=resize_size)
  images = noise_images(3, 16, 24)
  (batch,) = ip.eval_batches(split_of(images), batch_size=3, image_fn=eval_fn, image_size=S)
  resize = resize_size or 9  # round(8 / 0.9)
  for i, image in enumerate(images):
    want = (fgvc_eval_image(tf.constant(image), S, resize).numpy() - MEAN) / STD
    np.testing.assert_allclose(batch['image'][i], want, atol=1e-5)
  np.testing.assert_array_equal(batch['label'], [0, 1, 2])


def test_fgvc_eval_resize_size_matters():
  images = noise_images(1, 16, 24)
  outs = [fgvc_fns(resize_size=r)[1](tf.constant(images[0])).numpy() for r in (None, 16)]
  assert not np.allclose(*outs)


def test_resize_recipe_is_preprocess():
  images = noise_images(4, 16, 12)
  train_fn, eval_fn = ip.recipe_image_fns('resize', S, MEAN, STD)
  want = preprocess(images, S, MEAN, STD).numpy()
  (batch,) = ip.eval_batches(split_of(images), batch_size=4, image_fn=eval_fn, image_size=S)
  np.testing.assert_allclose(batch['image'], want, atol=1e-6)
  train = next(ip.train_batches(split_of(images), batch_size=4, image_fn=train_fn, seed=0))
  np.testing.assert_allclose(train['image'], want[train['label']], atol=1e-6)  # no augmentation


def test_unknown_recipe():
  with pytest.raises(ValueError, match=r"recipe='bogus'.*resize, fgvc"):
    ip.recipe_image_fns('bogus', S, MEAN, STD)


# ----------------------------------------------------------------------------- augmentation seeds


def test_augmentation_differs_per_example_and_per_epoch():
  image = noise_images(1, 32, 32)[0]
  images = np.stack([image, image, *noise_images(2, 32, 32, seed=1)])  # examples 0 and 1 equal
  train_fn, _ = fgvc_fns()
  it = ip.train_batches(split_of(images), batch_size=4, image_fn=train_fn, seed=0)
  epochs = [next(it) for _ in range(3)]  # one batch per epoch
  by_label = [{int(k): img for k, img in zip(b['label'], b['image'])} for b in epochs]
  for e in by_label:
    assert not np.allclose(e[0], e[1])  # same pixels, different crops
  for k in range(4):
    assert not np.allclose(by_label[0][k], by_label[1][k])  # same example, other epoch
    assert not np.allclose(by_label[1][k], by_label[2][k])


def test_two_view_seeds_differ_per_example():
  image = noise_images(1, 16, 16)[0]
  split = split_of(np.stack([image] * 4))
  (batch,) = ip.two_view_batches(split, batch_size=4, image_size=S, mean=MEAN, std=STD, seed=0)
  views = batch['image'].reshape(8, -1)
  assert len({v.tobytes() for v in views}) == 8  # four equal images, eight different views
