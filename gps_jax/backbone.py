"""Stage 1 of a run: the backbone — its model, parameters on the device, roles and mesh.

`setup_backbone` builds what every later stage (`gps_jax.select_stage`, the trainer)
works on: the model of ``config.model`` with the method's own layers, the checkpoint's
parameters (or a fresh init) on the device, each leaf's role from the method's rules,
and the device mesh when there are several devices.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import ml_collections

from gps_jax import checkpoint
from gps_jax import methods
from gps_jax import roles as roles_lib
from gps_jax import sharding as shard_lib
from gps_jax import tasks
from gps_jax import tree as tree_lib
from gps_jax import weights
from gps_jax.config_defaults import VIT_B16_I21K_FILE
from gps_jax.data import input_pipeline as pipeline
from gps_jax.data import splits as splits_lib
from gps_jax.errors import UserError
from gps_jax.metrics import say
from gps_jax.models import fitting
from gps_jax.models import registry


@dataclasses.dataclass
class Backbone:
  """The model of a run, its flat parameters on the device, roles and mesh."""

  model: Any
  model_config: dict
  num_classes: int
  params: dict
  roles: Any
  mesh: Any
  base_path: str
  base_sha256: Optional[str]
  task: Any = None  # what the outputs train against (gps_jax.tasks); None: classification


def processes() -> dict:
  """This process's index and the process count, as the data pipeline takes them."""
  return {'process_index': jax.process_index(), 'process_count': jax.process_count()}


def load_params(config: ml_collections.ConfigDict, model, model_config, rng: jax.Array) -> dict:
  """Flat parameters: the checkpoint in `config.model.checkpoint`, or a fresh init.

  Any file `gps_jax.weights.load_checkpoint` reads: vit_jax / gps_jax `.npz`, timm
  `.safetensors` or `.pth`/`.bin`, for ViT, Swin and ConvNeXt.
  """
  path = config.model.checkpoint
  if not path and config.model.require_checkpoint:
    raise ValueError(
      'config.model.checkpoint is empty, but this recipe fine-tunes a pretrained backbone: '
      'pass --config.model.checkpoint=/path/to/the checkpoint (for ViT-B/16: '
      f'{VIT_B16_I21K_FILE}), or --config.model.require_checkpoint=False for random weights'
    )
  if not path:
    return tree_lib.flat(weights.init_params(model, rng))
  # No full init: a jitted init of the whole model costs seconds of CPU per run, and
  # the file gives every parameter but a new head (and a method's added layers).
  params = tree_lib.flat(weights.load_checkpoint(path, model_config, model=model, rng=rng))
  if config.model.reinit_head and any(tree_lib.is_head(p) for p in params):
    params.update(fitting.fresh_head(model, rng=rng))  # a new task gets a new head
  return params


def model_config_of(config: ml_collections.ConfigDict, num_classes: int) -> dict:
  """The model config a run builds: ``config.model`` with the class count, the method's
  own layers (adapters, prompts), ``train.compute_dtype`` and ``train.remat``. The delta's
  manifest keeps it whole."""
  model_config = {
    **config.model.to_dict(),
    'num_classes': num_classes,
    **methods.model_fields(config),
  }
  if config.train.compute_dtype:  # the forward's dtype (parameters stay in theirs)
    model_config['dtype'] = config.train.compute_dtype
  if config.train.remat:  # rematerialised blocks: the same parameters and values
    model_config['remat'] = config.train.remat
  return model_config


def image_fns(config: ml_collections.ConfigDict):
  """(train image fn, eval image fn) that feed the model: config.data.recipe at
  config.model.image_size, normalised with the model's mean / std."""
  return pipeline.recipe_image_fns(
    config.data.recipe,
    config.model.image_size,
    tuple(config.model.mean),
    tuple(config.model.std),
    resize_size=config.data.resize_size or None,
    train_interpolation=config.data.train_interpolation,
    eval_interpolation=config.data.eval_interpolation,
  )


def run_task(config: ml_collections.ConfigDict, num_classes: int):
  """The task of a run (`gps_jax.tasks`): the model family's output kind, which must be
  what the data source's labels are (class labels, or masks)."""
  kind = registry.family_of(config.model).task
  data_kind = splits_lib.task_of(config.data)
  if kind != data_kind:
    raise UserError(
      f'config.data.source={config.data.source!r} has {data_kind} labels, but '
      f'config.model.name={config.model.name!r} is a {kind} model'
    )
  return tasks.make(kind, num_classes, config.train.label_smoothing)


def setup_backbone(config: ml_collections.ConfigDict, rng: jax.Array) -> Backbone:
  """Stage 1: the model, its parameters on the device, the roles, the device mesh and the
  task."""
  num_classes = splits_lib.num_classes(config.data)
  task = run_task(config, num_classes)
  model_config = model_config_of(config, num_classes)
  model = weights.build_model(model_config)
  say(f'[{config.method}] loading backbone {config.model.checkpoint or "(random init)"}')
  # On the device once: the jitted steps would otherwise re-send host arrays every call.
  params = jax.device_put(load_params(config, model, model_config, rng))
  # One device: plain jit. Several (GPUs, hosts, simulated CPUs): the config.mesh shardings.
  mesh = shard_lib.make_mesh(config.mesh) if jax.device_count() > 1 else None
  if mesh is not None:
    shard_lib.check_batch(config.data.batch_size, mesh)
    shard_lib.check_batch(config.data.eval_batch_size, mesh, 'config.data.eval_batch_size')
    if config.gps.batch_size:
      shard_lib.check_batch(config.gps.batch_size, mesh, 'config.gps.batch_size')
    say(f'[{config.method}] mesh {dict(mesh.shape)} over {mesh.size} devices')
  roles = roles_lib.assign_roles(
    params, methods.rules(config), config.fan_in_rules or roles_lib.DEFAULT_FAN_IN_RULES
  )
  # The delta's manifest names the base file by content: a delta only applies to it.
  path = config.model.checkpoint
  sha = checkpoint.file_sha256(path) if path else None
  return Backbone(model, model_config, num_classes, params, roles, mesh, path, sha, task)
