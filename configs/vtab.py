"""VTAB-1k with ViT-B/16: the paper's per-task recipe (reference README section 2).

  python -m gps_jax.main --config=configs/vtab.py:cifar100 --workdir=runs/vtab/cifar100 \
    --config.data.data_dir=~/tensorflow_datasets \
    --config.model.checkpoint=/path/to/B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz

The argument is a task of gps_jax.data.vtab.TASKS, optionally followed by options:

* ``,val``: model-selection protocol: train on train800, evaluate val200 every
  10 epochs and at the end (``best_val_accuracy`` in results.json); test is
  still evaluated once, after the last epoch, and is never used to choose.
* ``,folder``: read a VTAB-1k folder in the GPS/SSF layout (``*.txt``) at
  ``config.data.data_dir`` instead of TFDS.

Default protocol: train on train800val200 (1,000 images), report the test
accuracy after the last epoch. VTAB recipe: resize to 224, no augmentation, no
mixup, no EMA; the selection pass uses the two-view SupCon augmentation.
"""

from gps_jax.config_defaults import paper_config, parse_config_arg
from gps_jax.data import vtab

# task: (K, batch size, lr, drop-path) — the GPS reference table.
RECIPES = {
  'caltech101': (1, 16, 2e-3, 0.0),
  'cifar100': (1, 32, 1e-2, 0.0),
  'dtd': (1, 16, 2e-3, 0.0),
  'oxford_flowers102': (1, 16, 2e-3, 0.0),
  'oxford_iiit_pet': (1, 32, 3e-3, 0.0),
  'svhn': (1, 32, 5e-3, 0.0),
  'sun397': (1, 16, 2.5e-3, 0.0),
  'patch_camelyon': (2, 32, 4e-3, 0.0),
  'eurosat': (1, 16, 2e-3, 0.0),
  'resisc45': (1, 16, 1.5e-3, 0.1),
  'diabetic_retinopathy': (1, 32, 2e-3, 0.2),
  'clevr_count': (1, 16, 3e-4, 0.1),
  'clevr_distance': (1, 16, 2e-3, 0.1),
  'dmlab': (1, 16, 1.5e-3, 0.1),
  'kitti_distance': (1, 16, 1e-3, 0.0),
  'dsprites_location': (1, 32, 7e-3, 0.0),
  'dsprites_orientation': (1, 16, 5e-4, 0.2),
  'smallnorb_azimuth': (1, 32, 3e-3, 0.1),
  'smallnorb_elevation': (1, 32, 3e-4, 0.2),
}
OPTIONS = {'val', 'folder'}


def get_config(arg=None):
  task, options = parse_config_arg(arg, tuple(RECIPES), 'VTAB-1k task')
  if options - OPTIONS:
    raise ValueError(f'unknown option(s) {sorted(options - OPTIONS)} in {arg!r}; use {OPTIONS}')
  k, batch, lr, drop_path = RECIPES[task]
  c = paper_config(
    k=k, batch_size=batch, lr=lr, drop_path=drop_path, model_selection='val' in options
  )
  c.data.source = 'vtab_folder' if 'folder' in options else 'vtab'
  c.data.name = vtab.get_task(task).name
  c.data.recipe = 'resize'
  c.train.log_every = 50
  return c
