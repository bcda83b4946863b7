"""GPS on the Segment Anything Model: polyp segmentation on Kvasir-SEG (the paper's Table 5).

  python -m gps_jax.main --config=configs/polyp.py --workdir=runs/polyp \
      --config.data.data_dir=/path/to/Kvasir-SEG \
      --config.model.checkpoint=/path/to/sam_vit_b_01ec64.pth

(or the Hugging Face port's file: --config.model.checkpoint=/path/to/sam-vit-base/model.safetensors).

The recipe is the original's (FightingFighting/GPS, SAM/configs/cod-sam-vit-b.yaml and
SAM/train.py): SAM ViT-B at 1024 x 1024, no augmentation (resize only; masks nearest),
ImageNet mean / std, batch 1, AdamW at lr 2e-4 with torch's default weight decay 0.01,
a cosine set once per epoch down to 1e-7 over 20 epochs (CosineAnnealingLR), the BCE + IoU
loss (`gps_jax.tasks.Segmentation`), K = 1. GPS selects with that loss through the mask
decoder, summed over one pass of the training split (`config.gps.score` 'task_loss', the
SAM family's source for gps); the mask decoder and the no-mask embedding train in full
with every method, as in the original. Metrics: mDice and mIoU over the test images.

The data is ``Kvasir-SEG/images`` and ``masks`` split 800 / 100 / 100 by
`gps_jax.data.kvasir.split_stems` (seed ``data.split_seed``); the original tests on a
sessile subset that lies inside its training folder and selects on it, so its numbers are
not comparable one to one (README, "Segmentation").

``polyp.py:synthetic`` is the offline run: a small SAM from random weights on generated
Kvasir-SEG-layout images (`gps_jax.data.kvasir.write_synthetic`, written once into
``$GPS_JAX_CACHE`` or ~/.cache/gps_jax), the same path end to end on a CPU in minutes. It
checks the machinery (the fine-tuned model's mDice against the untuned one's), not the
paper's number. Add ``,compare`` for the methods side by side (a table in the workdir).
"""

import os

import ml_collections

from gps_jax.config_defaults import experiment_config
from gps_jax.models.sam import sam_config

OPTIONS = {'synthetic', 'compare'}
# The methods that apply to SAM (gps_jax.models.sam.METHOD_RULES); `linear` is the decoder
# alone. VPT is not defined for SAM's windowed attention.
METHODS = ('gps', 'full', 'linear', 'bitfit', 'lora', 'ssf', 'adapter')
# The synthetic set: images, its seed, and the small SAM trained on it from random weights.
SYNTHETIC_IMAGES = 200
SYNTHETIC_SEED = 0
SYNTHETIC_MODEL = dict(
  image_size=128, patch_size=16, embed_dim=96, depth=4, num_heads=3, global_blocks=(1, 3),
  window=4, prompt_dim=64, decoder_heads=2, decoder_mlp_dim=256, iou_head_hidden=64,
)  # fmt: skip


def _model(variant: str = 'vit_b', **overrides) -> ml_collections.ConfigDict:
  m = sam_config(variant, **overrides)
  m.checkpoint = ''
  m.require_checkpoint = True
  m.reinit_head = True  # no head: nothing to re-initialise
  m.head_init = 'zeros'
  m.drop_path_rate = 0.0
  return m


def synthetic_dir() -> str:
  """Where the synthetic set is written once: $GPS_JAX_CACHE, else ~/.cache/gps_jax."""
  cache = os.environ.get('GPS_JAX_CACHE') or os.path.join(os.path.expanduser('~'), '.cache', 'gps_jax')
  return os.path.join(cache, f'kvasir_synthetic-{SYNTHETIC_IMAGES}-{SYNTHETIC_SEED}')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  options = set(filter(None, (arg or '').split(',')))
  unknown = options - OPTIONS
  if unknown:
    raise ValueError(f'unknown option(s) {sorted(unknown)}; valid: {sorted(OPTIONS)}')
  c = experiment_config()
  c.method = 'gps'
  c.model = _model()
  c.model.image_size = 1024
  c.data.source = 'kvasir'
  c.data.name = 'kvasir_seg'
  c.data.data_dir = ''  # the Kvasir-SEG folder (images/, masks/)
  c.data.split_seed = 0
  c.data.train_split, c.data.val_split, c.data.test_split = 'train', 'val', 'test'
  c.data.recipe = 'resize'
  c.data.batch_size = 1
  c.data.eval_batch_size = 4
  c.data.cache = False  # 800 encoded JPEGs are cheap to re-read; nothing gained
  c.gps.k = 1
  c.optim.name = 'adamw'
  c.optim.lr = 2e-4
  c.optim.weight_decay = 0.01
  c.optim.end_lr = 1e-7
  c.optim.warmup_epochs = 0.0
  c.optim.schedule = 'timm_epoch_cosine'
  c.train.epochs = 20
  c.train.eval_every_epochs = 1.0
  c.train.log_every = 100
  if 'synthetic' in options:
    _synthetic(c)
  if 'compare' in options:
    c.compare_methods = METHODS
  return c


def _synthetic(c: ml_collections.ConfigDict) -> None:
  c.model = _model('', **SYNTHETIC_MODEL)
  c.model.require_checkpoint = False
  c.data.name = 'kvasir_synthetic'
  c.data.data_dir = synthetic_dir()
  c.data.synthetic_images = SYNTHETIC_IMAGES  # written there when it has none
  c.data.split_seed = SYNTHETIC_SEED
  c.data.batch_size = 8
  c.data.eval_batch_size = 20
  c.optim.lr = 1e-3
  c.optim.end_lr = 1e-6
  c.train.epochs = 10
  c.train.eval_every_epochs = 5.0
  c.train.eval_untuned = True
  c.train.log_every = 20
  c.method_overrides = {'full': {'optim': {'lr': 2e-4}}}
