"""FGVC with ViT-B/16: the paper's per-dataset recipe (reference README section 2).

  python -m gps_jax.main --config=configs/fgvc.py:cub --workdir=runs/fgvc/cub \
    --config.data.data_dir=/data/CUB_200_2011 \
    --config.model.checkpoint=/path/to/B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz

The argument is one of cub, nabirds, oxford_flowers, stanford_dogs,
stanford_cars, optionally followed by options:

* ``,tfds``: read the TFDS builder (caltech_birds2011, oxford_flowers102,
  stanford_dogs, cars196; not nabirds) from ``config.data.data_dir`` instead
  of a VPT folder. Without it, ``data_dir`` is the VPT folder with
  ``train.json``, ``val.json``, ``test.json``.
* ``,val``: model-selection protocol: train on train, evaluate val every 10
  epochs (``best_val_accuracy``); test once after the last epoch.
* ``,swin_b`` or ``,convnext_b``: the backbone of the paper's Table 4 instead of
  ViT-B/16: timm's ``swin_base_patch4_window7_224.ms_in22k`` or
  ``convnext_base.fb_in22k`` (their ``model.safetensors``, or a ``.pth``), at 224
  with the ImageNet mean / std of those files. The paper publishes no per-dataset
  recipe for them; these configs use the ViT-B/16 one (K, batch, lr, drop-path,
  EMA), a starting point to tune on the val protocol.

Default protocol: train on train+val, report test accuracy after the last
epoch with the EMA weights (the raw weights' accuracy is reported beside it).
Recipe: random resized crop 224 + flip, mixup 0.8, cutmix 1.0, label smoothing
0.1, eval resize 248 + centre crop 224, EMA of the trainable weights.
"""

from gps_jax.config_defaults import paper_config, parse_config_arg

# name: (K, batch size, lr, drop-path, EMA decay, classes, VPT image folder).
RECIPES = {
  'cub': (2, 32, 3e-3, 0.0, 0.9998, 200, 'images'),
  'nabirds': (20, 32, 1e-4, 0.1, 0.9998, 555, 'images'),
  'oxford_flowers': (1, 32, 1e-3, 0.1, 0.99, 102, ''),
  'stanford_cars': (15, 32, 5e-4, 0.0, 0.9998, 196, ''),
  'stanford_dogs': (1, 64, 1e-4, 0.0, 0.9998, 120, 'Images'),
}
TFDS_NAMES = ('cub', 'oxford_flowers', 'stanford_dogs', 'stanford_cars')
OPTIONS = {'tfds', 'val', 'vit_b16', 'swin_b', 'convnext_b'}


def get_config(arg=None):
  name, options = parse_config_arg(arg, tuple(RECIPES), 'FGVC data set')
  if options - OPTIONS:
    raise ValueError(f'unknown option(s) {sorted(options - OPTIONS)} in {arg!r}; use {OPTIONS}')
  if 'tfds' in options and name not in TFDS_NAMES:
    raise ValueError(f'{name} has no TFDS builder; use its VPT folder (drop ",tfds")')
  k, batch, lr, drop_path, ema, classes, image_dir = RECIPES[name]
  backbones = options & {'vit_b16', 'swin_b', 'convnext_b'}
  if len(backbones) > 1:
    raise ValueError(f'choose one backbone in {arg!r}, not {sorted(backbones)}')
  c = paper_config(
    k=k,
    batch_size=batch,
    lr=lr,
    drop_path=drop_path,
    model_selection='val' in options,
    backbone=backbones.pop() if backbones else 'vit_b16',
  )
  c.data.source = 'tfds' if 'tfds' in options else 'vpt_folder'
  c.data.name = name
  c.data.num_classes = classes
  c.data.image_dir = image_dir
  c.data.recipe = 'fgvc'
  c.data.resize_size = 248
  # The original (timm 0.6.5, --simple-aug --contrast-aug): train crops and SupCon views
  # with timm's default --train-interpolation 'random' (bilinear or bicubic per image),
  # eval with the ViT config's 'bicubic'.
  c.data.train_interpolation = 'random'
  c.data.eval_interpolation = 'bicubic'
  c.data.select_interpolation = 'random'
  c.train.mixup = 0.8
  c.train.cutmix = 1.0
  c.train.label_smoothing = 0.1
  c.train.ema_decay = ema
  c.train.log_every = 100
  return c
