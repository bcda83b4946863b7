"""Is the input pipeline the bottleneck? Pipeline images/s beside train-step images/s.

  .venv/bin/python tools/bench_input.py --config=configs/fgvc.py:cub \
      [--config.data.data_dir=/data/CUB_200_2011] [--batches=20] [--synthetic=400]

Both rates are measured in one run, on this machine, for the config's batch
size, image size, recipe and model:

* pipeline: ``train_batches`` of the config's training split (decode, augment,
  normalise, batch), timed after ``--warmup`` batches;
* train step: the jitted sparse GPS step (random weights, random selection of
  the config's K: the step costs the same whatever is selected) on device
  arrays, timed after compilation, with nothing else running.

With ``--synthetic=N`` (the default when ``config.data.data_dir`` is empty) the
split is N random JPEGs of 500x375 (about the CUB average) written to a
temporary VPT folder, so the tool runs offline. A ratio below 1 means the
accelerator would wait for input.
"""

from __future__ import annotations

from gps_jax import quiet

quiet.import_tensorflow()  # before anything imports it: no C++ start-up lines on stderr

import functools
import gc
import json
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

from gps_jax import errors
from gps_jax import methods
from gps_jax import roles as roles_lib
from gps_jax import tree as tree_lib
from gps_jax import scoring
from gps_jax import selection
from gps_jax import trainer as trainer_lib
from gps_jax.data import input_pipeline as pipeline
from gps_jax.data import splits as splits_lib
from gps_jax.models import vit as vit_lib

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', 'configs/fgvc.py:cub', 'Experiment config file.')
flags.DEFINE_integer('batches', 20, 'Batches to time for each rate.')
flags.DEFINE_integer('warmup', 3, 'Batches before timing (compilation, caches).')
flags.DEFINE_integer('synthetic', 0, 'Use N random 500x375 JPEGs (0: the config data).')


def _synthetic_folder(root: str, n: int, num_classes: int) -> None:
  import tensorflow as tf

  rng = np.random.default_rng(0)
  entries = {}
  for i in range(n):
    key = f'img_{i:05d}.jpg'
    pixels = rng.integers(0, 256, size=(375, 500, 3), dtype=np.uint8)
    tf.io.write_file(os.path.join(root, key), tf.io.encode_jpeg(pixels, quality=90))
    entries[key] = i % num_classes
  for split in ('train', 'val', 'test'):
    with open(os.path.join(root, f'{split}.json'), 'w') as f:
      json.dump(entries, f)


def _rate(fn, batches: int, warmup: int, batch_size: int) -> float:
  for _ in range(warmup):
    fn()
  t0 = time.perf_counter()
  for _ in range(batches):
    fn()
  return batches * batch_size / (time.perf_counter() - t0)


def main(argv):
  del argv
  config = FLAGS.config
  data = config.data
  synthetic = FLAGS.synthetic or (0 if data.get('data_dir') else 400)
  bs = data.batch_size
  with tempfile.TemporaryDirectory() as tmp:
    if synthetic:
      num_classes = splits_lib.num_classes(data) if data.get('num_classes') else 10
      _synthetic_folder(tmp, synthetic, num_classes)
      data.source, data.data_dir, data.image_dir = 'vpt_folder', tmp, ''
      data.num_classes, data.train_split = num_classes, 'train'
    split = splits_lib.open_split(data, data.train_split)
    num_classes = split.num_classes
    size, mean, std = config.model.image_size, tuple(config.model.mean), tuple(config.model.std)
    train_fn, _ = pipeline.recipe_image_fns(
      data.recipe,
      size,
      mean,
      std,
      resize_size=data.get('resize_size') or None,
      train_interpolation=data.get('train_interpolation', 'bilinear'),
    )
    batches = pipeline.train_batches(split, batch_size=bs, image_fn=train_fn, seed=0)
    input_rate = _rate(functools.partial(next, batches), FLAGS.batches, FLAGS.warmup, bs)
    del batches  # Stop the prefetching threads before the folder goes away.
    gc.collect()

  model = vit_lib.build_vit({**config.model.to_dict(), 'num_classes': num_classes})
  init = jax.jit(lambda r: model.init(r, jnp.zeros((1, size, size, 3)), train=False)['params'])
  params = tree_lib.flat(init(jax.random.PRNGKey(0)))
  roles = roles_lib.assign_roles(
    params, methods.METHODS['gps'].rules, roles_lib.DEFAULT_FAN_IN_RULES
  )
  indices = selection.select_neuron_indices(
    scoring.random_scores(roles, jax.random.PRNGKey(1)), config.gps.k, roles
  )
  tuner = trainer_lib.MaskedFinetuner(
    model.apply, roles, indices, config, num_classes=num_classes, total_steps=1000
  )
  state, frozen, aux = tuner.init(params)
  batch = jax.device_put(
    {
      'image': jnp.zeros((bs, size, size, 3), jnp.float32),
      'label': jnp.arange(bs, dtype=jnp.int32) % num_classes,
    }
  )
  rng = jax.random.PRNGKey(2)
  box = {'state': state}

  def step():
    box['state'], metrics = tuner.train_step(box['state'], frozen, aux, batch, rng)
    jax.block_until_ready(metrics['loss'])

  step_rate = _rate(step, FLAGS.batches, FLAGS.warmup, bs)
  source = f'synthetic {synthetic} JPEGs 500x375' if synthetic else split.name
  print(f'config: {config.data.name}  recipe {data.recipe}  batch {bs}  image {size}')
  print(f'model: ViT {config.model.get("variant") or "custom"}  K {config.gps.k}')
  print(f'device: {jax.devices()[0].platform} x{jax.device_count()}  input: {source}')
  print(f'input pipeline: {input_rate:10,.1f} img/s  ({os.cpu_count()} CPU cores)')
  print(f'train step:     {step_rate:10,.1f} img/s')
  verdict = 'input-bound' if input_rate < step_rate else 'compute-bound'
  print(f'pipeline / step: {input_rate / step_rate:.2f}  ({verdict})')


if __name__ == '__main__':
  app.run(lambda argv: errors.run(lambda: main(argv)))  # a bad config: one error: line, status 1
