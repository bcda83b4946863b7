"""Defaults of an experiment config, shared by the files in configs/.

Every key read by gps_jax is listed here with its meaning; config files start
from `experiment_config()` and change what their recipe needs.
"""

from __future__ import annotations

import ml_collections


def experiment_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 42
  # A name of gps_jax.methods.METHODS: gps | random | magnitude | full | linear | bitfit |
  # lora | ssf | adapter | vpt_shallow | vpt_deep (python -m gps_jax.main --help lists them)
  c.method = 'gps'
  # Ordered (regex, role) pairs on '/'-joined parameter paths; empty = the
  # method's rules in gps_jax.methods.METHODS.
  c.rules = ()
  # Ordered (regex, number of leading fan-in axes) pairs; empty = default.
  c.fan_in_rules = ()
  # Several methods on one backbone and data, with a comparison table.
  c.compare_methods = ()
  # Seeds to repeat every method with (mean±std in the table); empty = (seed,).
  c.compare_seeds = ()
  # {method: nested overrides}, e.g. {'full': {'optim': {'lr': 1e-3}}}.
  c.method_overrides = {}

  # Device mesh, used when there is more than one device: batches split over all of
  # them, every other array over 'fsdp' (gps_jax/sharding.py); -1 = the rest.
  c.mesh = ml_collections.ConfigDict({'data': -1, 'fsdp': 1})

  c.model = ml_collections.ConfigDict()
  c.model.name = 'vit'
  c.model.variant = 'B/16'
  c.model.image_size = 224
  c.model.drop_path_rate = 0.0
  c.model.mean = (0.5, 0.5, 0.5)
  c.model.std = (0.5, 0.5, 0.5)
  # Any file gps_jax.weights.load_checkpoint reads (.npz, .safetensors, .pth); empty =
  # random init, which require_checkpoint=True refuses (the paper recipes set it).
  c.model.checkpoint = ''
  c.model.require_checkpoint = False
  c.model.reinit_head = True  # a new task always gets a fresh head
  # The new head's kernel init (bias: zeros): zeros | trunc_normal (timm's
  # trunc_normal_(std=.02), the head the reference's timm models start from), drawn
  # from the run's init rng; used whenever the head is new (reinit_head, or a
  # checkpoint whose head does not fit).
  c.model.head_init = 'zeros'
  # Besides these keys, a model config may set the module fields of its family,
  # which replace those of `variant` (or stand in for it, with variant=''): the keys
  # of gps_jax.models.vit_config / swin_config / convnext_config, e.g. ViT's
  # patch_size, hidden_size, num_layers, num_heads, mlp_dim (configs/demo.py).

  c.data = ml_collections.ConfigDict()
  # memory (demo sets) | vtab (TFDS VTAB-1k task) | tfds (FGVC / CIFAR-100 builders)
  # | vtab_folder (GPS/SSF *.txt layout) | vpt_folder (VPT *.json layout);
  # see gps_jax/data/splits.py.
  c.data.source = 'memory'
  c.data.name = 'mnist_5k'  # demo set, VTAB-1k task or TFDS_SETS name
  c.data.data_dir = ''  # TFDS data_dir, or the dataset folder for *_folder sources
  c.data.manual_dir = ''  # TFDS manual downloads (resisc45, retinopathy, ...)
  c.data.prepare = False  # run the TFDS builder's download_and_prepare if needed
  c.data.image_dir = ''  # vpt_folder: folder the JSON keys are relative to
  c.data.num_classes = 0  # 0 = from the source (required for vpt_folder)
  c.data.split_seed = 0
  # kvasir: > 0 writes that many generated Kvasir-SEG-layout images (seed split_seed) into
  # data_dir when it holds none (gps_jax.data.kvasir.write_synthetic; configs/polyp.py).
  c.data.synthetic_images = 0
  # Split roles: train | val | trainval | test (VTAB: train800 | val200 | train800val200).
  c.data.train_split = 'train'
  c.data.val_split = 'val'  # empty: no validation split
  c.data.test_split = 'test'
  c.data.recipe = 'resize'  # resize (VTAB, demo) | fgvc (crop + flip; eval resize + crop)
  c.data.resize_size = 0  # fgvc eval resize before the centre crop; 0 = image_size / 0.9
  # Resize interpolation: bilinear (no antialiasing; fgvc eval: TF's antialiased
  # triangle) | bicubic (PIL's: antialiased when shrinking, as timm / torchvision on PIL
  # images, which the pretrained ViTs and the original GPS runs use) | random (train and
  # selection only: bilinear or bicubic drawn per image from its augmentation seed,
  # timm's 'random'). bilinear keeps the demo's results; configs/vtab.py, fgvc.py and
  # cifar100.py set the original's choice.
  c.data.train_interpolation = 'bilinear'  # train images: resize / random resized crop
  c.data.eval_interpolation = 'bilinear'  # eval images: resize / resize + centre crop
  c.data.select_interpolation = 'bilinear'  # SupCon views of the selection pass
  c.data.batch_size = 32  # global, over all processes
  c.data.eval_batch_size = 256
  c.data.shuffle_buffer = 0  # 0 = the whole (per-process) split
  c.data.cache = True  # keep the undecoded training split in memory

  c.gps = ml_collections.ConfigDict()
  c.gps.k = 1
  c.gps.temperature = 0.07
  c.gps.score = ''  # a key of gps_jax.scoring.SCORERS; empty = the method's
  c.gps.batch_size = 0  # selection batch size; 0 = data.batch_size
  # The SupCon pass's backward in this many chunks of a batch's 2 x batch views
  # (GradCache: the same scores, one chunk's activations, one more forward pass).
  c.gps.score_chunks = 1
  # Where the budget goes (the paper's Table 6a), always with the entry count of the
  # neuron level: neuron (GPS: top-K inputs of every neuron) | layer (the top
  # K * neurons entries of each tensor) | net (the top entries over all candidates).
  c.gps.level = 'neuron'
  # Regexes (re.search) on '/'-joined paths of `select` leaves that get no entry
  # (Fig. 6a/b, e.g. (r'encoderblock_(0|1|2)/',)): they are frozen instead.
  c.gps.exclude = ()
  # The scores are saved as <workdir>/scores.npz; a workdir here reuses its scores
  # (same backbone, roles and score source) for another K or level, without a pass.
  c.gps.scores_from = ''
  # Write <workdir>/scores.npz after a SupCon / head-CE pass: float32 of every candidate
  # (ViT-B/16: about 340 MB a run); False writes none (no later gps.scores_from).
  c.gps.save_scores = True

  # Hyper-parameters of the other methods (used only by the method they name).
  c.lora = ml_collections.ConfigDict()
  c.lora.rank = 8
  c.lora.alpha = 8.0  # the update is (alpha / rank) * A @ B
  # Regexes on '/'-joined kernel paths; empty = the model family's query and value
  # kernels (gps_jax.updates.LORA_TARGETS).
  c.lora.targets = ()
  c.ssf = ml_collections.ConfigDict()
  # Regexes on module paths (a module = the leaves beside a 'bias'); empty = every
  # linear, conv and norm of the backbone (gps_jax.updates.SSF_TARGETS).
  c.ssf.targets = ()
  c.adapter = ml_collections.ConfigDict()
  c.adapter.dim = 8  # bottleneck width of the adapters after attention and MLP
  c.vpt = ml_collections.ConfigDict()
  c.vpt.tokens = 0  # prompt tokens (per layer for vpt_deep); 0 = 200 shallow, 50 deep

  c.train = ml_collections.ConfigDict()
  c.train.epochs = 100
  c.train.steps = 0  # > 0 overrides epochs (and cooldown_epochs): the whole run
  # Epochs after `epochs` at optim.end_lr (timm's cooldown, 10 in the reference): a
  # run trains epochs + cooldown_epochs, the lr schedule covers `epochs` only.
  c.train.cooldown_epochs = 0
  c.train.update_mode = 'sparse'  # sparse | dense
  # sparse mode's weight gradients (gps_jax.sparse_grad): auto = K entries per neuron
  # (no dense weight gradient) for the Dense / attention / patch-conv kernels whose K is at
  # most MAX_K_SHARE of the fan-in (1/384, measured: README "The cost of a step"), effective
  # kernels and autodiff's dense weight gradients for the rest; on = K-entry for every such
  # kernel; off = for none. The values trained are the same.
  c.train.sparse_grad = 'auto'
  # The frozen base's dtype in the step: float32 | bfloat16 (half its memory; deltas,
  # trained leaves and optimizer state stay float32).
  c.train.base_dtype = 'float32'
  # The model's compute dtype (its `dtype` field, selection pass included): '' = the
  # model config's own (float32), or float32 | bfloat16.
  c.train.compute_dtype = ''
  # Rematerialised blocks: '' (off) or a jax.checkpoint_policies name (nothing_saveable,
  # dots_saveable, dots_with_no_batch_dims_saveable, everything_saveable): activations
  # are recomputed in the backward pass instead of kept (gps_jax.models.layers.blocks).
  c.train.remat = ''
  c.train.label_smoothing = 0.0
  c.train.mixup = 0.0  # mixup alpha (timm); 0 = off
  c.train.cutmix = 0.0  # cutmix alpha (timm); 0 = off
  c.train.mix_prob = 1.0  # probability that a batch is mixed
  c.train.mix_switch_prob = 0.5  # cutmix instead of mixup, when both are on
  c.train.ema_decay = 0.0  # EMA of the trainable weights; > 0 reports and saves the EMA
  c.train.log_every = 50
  # Checkpoints of the trainable state in <workdir>/train_state every N steps (0: at
  # the end only); a rerun in the same workdir resumes from the latest.
  c.train.checkpoint_every_steps = 0
  c.train.keep_checkpoints = 2
  c.train.eval_every_epochs = 10.0
  # Evaluate every split once before the first step too (results.json 'untuned'): the
  # starting point a fine-tuning is measured against; nothing is chosen on it.
  c.train.eval_untuned = False

  c.optim = ml_collections.ConfigDict()
  c.optim.name = 'adam'  # adam | adamw (the same: decoupled decay) | sgd
  c.optim.lr = 1e-3
  c.optim.weight_decay = 0.0
  # Ordered (regex, multiplier) pairs on '/'-joined parameter paths (re.search, first
  # match wins; a path no pair matches is an error): a leaf decays by
  # weight_decay * multiplier. In sparse mode the delta of a selected leaf decays as
  # its path says. E.g. ((r'(^|/)bias$', 0.0), (r'(^|/)[^/]*[Nn]orm[^/]*/', 0.0),
  # ('.*', 1.0)) spares biases and norms. Default: every parameter decays.
  c.optim.weight_decay_rules = (('.*', 1.0),)
  c.optim.b1 = 0.9  # adam / adamw
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.momentum = 0.9  # sgd
  c.optim.warmup_epochs = 10.0
  c.optim.warmup_init_lr = 1e-7
  c.optim.end_lr = 1e-8
  c.optim.grad_clip_norm = 0.0  # 0 = no clipping
  # A name of gps_jax.optim.SCHEDULES: warmup_cosine (per step: linear warm-up from
  # warmup_init_lr, then cosine from lr to end_lr over the remaining steps) |
  # timm_epoch_cosine (the reference's timm CosineLRScheduler: the lr changes once per
  # epoch, its cosine runs from epoch 0 with the warm-up inside it).
  c.optim.schedule = 'warmup_cosine'

  # Optional upstream stage (configs/demo.py): an `upstream_config()` whose
  # backbone is trained first, cached, and becomes model.checkpoint.
  c.upstream = None
  return c


def upstream_config() -> ml_collections.ConfigDict:
  """An upstream stage (`config.upstream`): an experiment config and its cache file.

  gps_jax/upstream.py trains it with `experiment.run` and caches the backbone at
  <cache_dir>/<name>-<hash of this config>.npz.
  """
  u = experiment_config()
  u.name = 'upstream'  # the cache file's prefix
  u.cache_dir = ''  # '' = $GPS_JAX_CACHE, else ~/.cache/gps_jax
  return u


# The backbone of the paper's ViT-B/16 results (reference README section 2).
VIT_B16_I21K_FILE = 'B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz'


def vit_b16_model() -> ml_collections.ConfigDict:
  """ViT-B/16 at 224 with the AugReg ImageNet-21k checkpoint's normalisation.

  The checkpoint path must be given (``--config.model.checkpoint=.../`` +
  VIT_B16_I21K_FILE); ``require_checkpoint`` turns a missing path into an error
  instead of a silent run from random weights.
  """
  m = ml_collections.ConfigDict()
  m.name = 'vit'
  m.variant = 'B/16'
  m.image_size = 224
  m.drop_path_rate = 0.0
  m.mean = (0.5, 0.5, 0.5)
  m.std = (0.5, 0.5, 0.5)
  m.checkpoint = ''
  m.require_checkpoint = True
  m.reinit_head = True
  return m


def _timm_backbone(family: str, variant: str):
  """A maker of the model config of a timm-checkpoint backbone at 224, with the ImageNet
  mean / std of timm's files; the family comes from gps_jax.models.registry."""

  def make() -> ml_collections.ConfigDict:
    from gps_jax.models.registry import family as model_family

    m = model_family(family).config(variant, num_classes=0, image_size=224)
    m.checkpoint = ''
    m.require_checkpoint = True
    m.reinit_head = True
    return m

  return make


# The paper's backbones (Table 4): the timm ImageNet-21k checkpoints they come from (timm
# name, file) and the maker of their model config.
BACKBONES = {
  'vit_b16': ('vit_base_patch16_224.augreg_in21k', VIT_B16_I21K_FILE, vit_b16_model),
  'swin_b': (
    'swin_base_patch4_window7_224.ms_in22k', 'model.safetensors', _timm_backbone('swin', 'B')
  ),
  'convnext_b': ('convnext_base.fb_in22k', 'model.safetensors', _timm_backbone('convnext', 'B')),
}


def backbone_model(name: str) -> ml_collections.ConfigDict:
  """The model config of a paper backbone at 224 with its checkpoint's normalisation."""
  if name not in BACKBONES:
    raise ValueError(f'unknown backbone {name!r}; use one of {", ".join(BACKBONES)}')
  return BACKBONES[name][2]()


def paper_config(
  *,
  k: int,
  batch_size: int,
  lr: float,
  drop_path: float,
  model_selection: bool,
  backbone: str = 'vit_b16',
) -> ml_collections.ConfigDict:
  """GPS on a paper backbone (default ViT-B/16) with the paper's schedule and a protocol.

  ``model_selection=False``: train on trainval, report test after the last
  epoch. ``True``: train on train, evaluate val every 10 epochs (for model
  selection); test is still evaluated once, at the end.
  """
  c = experiment_config()
  paper_schedule(c)
  c.method = 'gps'
  c.model = backbone_model(backbone)
  c.model.drop_path_rate = drop_path
  c.data.batch_size = batch_size
  c.data.eval_batch_size = 256
  if model_selection:
    c.data.train_split, c.data.val_split = 'train', 'val'
    c.train.eval_every_epochs = 10.0
  else:
    c.data.train_split, c.data.val_split = 'trainval', ''
    c.train.eval_every_epochs = 0.0
  c.data.test_split = 'test'
  c.gps.k = k
  c.optim.lr = lr
  # The reference's timm models start their new head from trunc_normal_(std=.02).
  c.model.head_init = 'trunc_normal'
  return c


def paper_schedule(c: ml_collections.ConfigDict) -> None:
  """The paper's fine-tuning schedule: Adam, wd 0, 100 epochs, 10 warm-up, cosine,
  as the reference's timm scheduler ran it: lr set per epoch, then 10 cooldown epochs
  at 1e-8 (timm's default --cooldown-epochs; the EMA of FGVC keeps averaging)."""
  c.seed = 42
  c.train.epochs = 100
  c.train.cooldown_epochs = 10
  c.optim.schedule = 'timm_epoch_cosine'
  c.optim.name = 'adam'
  c.optim.weight_decay = 0.0
  c.optim.warmup_epochs = 10.0
  c.optim.warmup_init_lr = 1e-7
  c.optim.end_lr = 1e-8
  c.optim.grad_clip_norm = 0.0


def parse_config_arg(arg: str | None, choices, what: str) -> tuple[str, set[str]]:
  """'name[,option...]' from --config=file.py:name,option -> (name, options)."""
  parts = [p.strip() for p in (arg or '').split(',') if p.strip()]
  if not parts or parts[0] not in choices:
    raise ValueError(
      f'give the {what} after the config file, e.g. --config=<file>.py:<name>; '
      f'got {arg!r}; valid names: {", ".join(choices)}'
    )
  return parts[0], set(parts[1:])
