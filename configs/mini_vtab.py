"""Mini-VTAB: six small offline VTAB-1k-style tasks on the demo's backbone.

  python -m gps_jax.main --config=configs/mini_vtab.py:dsprites_loc --workdir=runs/mv/dsprites_loc

The argument is a task of TASKS (gps_jax/data/mini_vtab.py draws them),
optionally followed by options:

* ``,tiny``: a few training steps, no warm-up, no validation, one method (a
  smoke test of the whole path, not a result).
* ``,scratch``: no upstream stage: a small randomly initialised ViT instead of
  the demo's Fashion-MNIST backbone (with ``tiny``: a run of a few seconds).

Every task: 28×28 grey images, 800 train / 200 val / a fixed test split (797
images for digits8x8, 2,000 for the others), the same split every run
(``data.split_seed`` 0). The backbone is the demo's upstream, built from
configs/demo.py itself, so both share one cached file. The recipe is the
demo's (Adam, cosine, 2 warm-up epochs, lr 1e-2; 1e-3 for ``full``, batch 32,
K=1) with 10 epochs (EPOCHS) instead of 20, so that the suite — 6 tasks × 6
methods (gps, random, linear, bitfit, lora, ssf) × 3 seeds — fits in an hour on
2 CPU cores with the upstream cached:

  python tools/reproduce.py --suite mini_vtab --seeds 0,1,2 \
      --methods gps,random,linear,bitfit,lora,ssf --out runs/mini_vtab

The README's "Offline benchmark" section shows what it measured.
"""

import importlib.util
import os

import ml_collections

from gps_jax.config_defaults import parse_config_arg
from gps_jax.data import mini_vtab

TASKS = tuple(mini_vtab.TASKS)
# task -> one line: what is predicted (and how many classes)
DESCRIPTIONS = {name: desc for name, (_, _, desc) in mini_vtab.TASKS.items()}
NUM_CLASSES = {name: n for name, (n, _, _) in mini_vtab.TASKS.items()}
OPTIONS = {'tiny', 'scratch'}
EPOCHS = 10
EVAL_EVERY_EPOCHS = 5
TINY_STEPS = 4


def _demo_module():
  """configs/demo.py, loaded by path (configs/ is not a package)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'demo.py')
  spec = importlib.util.spec_from_file_location('gps_jax_configs_demo', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _scratch_model(model: ml_collections.ConfigDict) -> None:
  model.hidden_size = 32
  model.num_layers = 2
  model.num_heads = 2
  model.mlp_dim = 64
  model.checkpoint = ''
  model.require_checkpoint = False


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  task, options = parse_config_arg(arg, TASKS, 'mini-VTAB task')
  unknown = options - OPTIONS
  if unknown:
    raise ValueError(f'unknown option(s) {sorted(unknown)}; valid: {sorted(OPTIONS)}')
  c = _demo_module().get_config()  # model, upstream, optimiser and methods of the demo
  c.data.source = 'memory'
  c.data.name = task
  c.data.split_seed = 0
  c.data.train_split, c.data.val_split, c.data.test_split = 'train', 'val', 'test'
  c.data.eval_batch_size = 200  # one shape for val (200) and test (2,000 or 797, padded)
  c.train.epochs = EPOCHS
  c.train.eval_every_epochs = EVAL_EVERY_EPOCHS
  if 'scratch' in options:
    c.upstream = None
    _scratch_model(c.model)
  if 'tiny' in options:
    c.train.steps = TINY_STEPS
    c.train.eval_every_epochs = 0
    c.train.log_every = 1
    c.data.val_split = ''
    c.optim.warmup_epochs = 0
    c.compare_methods = ()
  return c
