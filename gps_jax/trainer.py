"""The one trainer: every method's fine-tuning, through the update rule it is given.

The trainer builds the jitted train and eval steps once, with their shardings,
around one update rule of `gps_jax.updates` (sparse delta, dense masked, and
later low-rank or scale/shift rules); it never branches on which rule it holds.
`fit` runs the steps, the evaluations, the checkpoints and the metrics log.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, Iterable, Iterator, Mapping

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from gps_jax import metrics as metrics_lib
from gps_jax import progress
from gps_jax import optim
from gps_jax import sharding as shard_lib
from gps_jax import tasks
from gps_jax import tree as tree_lib
from gps_jax import updates
from gps_jax.mixup import mix_batch

MODES = tuple(updates.MASKED_RULES)


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  trainable: Any
  opt_state: Any
  ema: Any = None  # Moving average of `trainable` (config.train.ema_decay > 0), else None.


class MaskedFinetuner:
  """The state and the jitted train / eval steps of one run.

  `mode` names the update rule (`gps_jax.updates.RULES`) built from `roles` and
  `indices`; `update=` passes a rule object instead. The shapes of every part
  come from the roles, so the steps are jitted here, once, with the shardings
  of `mesh` (plain jit on the default device without one).
  """

  def __init__(
    self,
    apply_fn: Callable,
    roles: Any,
    indices: Mapping[str, jax.Array],
    config: ml_collections.ConfigDict,
    *,
    num_classes: int,
    total_steps: int,
    warmup_steps: int = 0,
    steps_per_epoch: int = 0,  # for config.optim.schedule='timm_epoch_cosine' (lr per epoch)
    mode: str = 'sparse',
    mesh: Mesh | None = None,
    update: Any = None,
    task: Any = None,
  ):
    # On a mesh, activations stay split by example (gps_jax.sharding.batch_sharded).
    self.apply_fn = shard_lib.batch_sharded(apply_fn, mesh)
    self.update = update if update is not None else updates.make(mode, roles, indices, config)
    self.mode = self.update.name
    self.num_classes = num_classes
    train = config.train
    self.label_smoothing = train.label_smoothing
    # What the outputs are trained and evaluated against (gps_jax.tasks); default: classes.
    self.task = task if task is not None else tasks.Classification(num_classes, train.label_smoothing)
    # timm-style batch mixup / cutmix in the step (the FGVC recipe); 0 alphas: off.
    self.mix = dict(
      mixup_alpha=train.mixup,
      cutmix_alpha=train.cutmix,
      prob=train.mix_prob,
      switch_prob=train.mix_switch_prob,
    )
    self.base_dtype = jnp.dtype(train.base_dtype)
    if self.mixes and not isinstance(self.task, tasks.Classification):
      raise ValueError('config.train.mixup / cutmix mix class labels: set them to 0 for this task')
    self.ema_decay = train.ema_decay
    if not 0.0 <= self.ema_decay < 1.0:
      raise ValueError(f'config.train.ema_decay={self.ema_decay}: use 0 (off) or a value in (0, 1)')
    self.lr_fn = optim.schedule(config.optim, total_steps, warmup_steps, steps_per_epoch)
    self.tx = self.update.optimizer(optim.optimizer(config.optim, self.lr_fn))
    self.mesh = mesh
    self._jit_steps(roles)

  # -- state -----------------------------------------------------------------
  def _parts(self, params):
    frozen, trainable, aux = self.update.init(params)
    # config.train.base_dtype: the frozen base may be held in bfloat16; the trainable
    # state, its optimizer moments and every merge with the base stay float32.
    frozen = {
      p: v.astype(self.base_dtype) if jnp.issubdtype(v.dtype, jnp.floating) else v
      for p, v in frozen.items()
    }
    state = TrainState(
      step=jnp.zeros((), jnp.int32),
      trainable=trainable,
      opt_state=self.tx.init(trainable),
      ema=jax.tree.map(jnp.copy, trainable) if self.ema_decay else None,
    )
    return state, frozen, aux

  def init(self, params: Mapping[str, jax.Array]) -> tuple[TrainState, dict, dict]:
    """(state, frozen, aux) from the full flat parameters of the backbone + head.

    `aux` is what the step needs besides the state (the rule's indices or masks).
    """
    # A fresh device copy: the step donates the state, which must never consume
    # the caller's arrays, and the frozen base must live on the device.
    parts = self._parts({p: jnp.array(v) for p, v in params.items()})
    if self.mesh is None:
      return parts
    return tuple(shard_lib.put_tree(t, s) for t, s in zip(parts, self._shardings))

  def _jit_steps(self, roles) -> None:
    """jax.jit of the train, compose and eval steps, with explicit shardings on a mesh."""
    abstract = {
      p: jax.ShapeDtypeStruct(r.shape, jnp.float32) for p, r in tree_lib.flat(roles).items()
    }
    if self.mesh is None:
      self._shardings = None
      self.train_step = jax.jit(self._train_step, donate_argnums=(0,))
      self.compose_jit = jax.jit(self.compose)
      self.eval_step = jax.jit(self._eval_step)
      return
    mesh = self.mesh
    parts = jax.eval_shape(self._parts, abstract)
    self._shardings = state_sh, frozen_sh, aux_sh = [
      shard_lib.tree_shardings(mesh, t) for t in parts
    ]
    params_sh = shard_lib.tree_shardings(mesh, abstract)
    batch_sh, repl = shard_lib.batch_sharding(mesh), shard_lib.replicated(mesh)
    self.train_step = jax.jit(
      self._train_step,
      in_shardings=(state_sh, frozen_sh, aux_sh, batch_sh, repl),
      out_shardings=(state_sh, repl),
      donate_argnums=(0,),
    )
    self.compose_jit = jax.jit(
      self.compose, in_shardings=(frozen_sh, aux_sh, state_sh.trainable), out_shardings=params_sh
    )
    self.eval_step = jax.jit(self._eval_step, in_shardings=(params_sh, batch_sh), out_shardings=repl)

  def device_batch(self, batch: Mapping) -> Mapping:
    """This process's host batch as global arrays on the mesh (as is without one)."""
    return batch if self.mesh is None else shard_lib.put_batch(batch, self.mesh)

  def compose(self, frozen, aux, trainable) -> dict[str, jax.Array]:
    """Full flat parameters from the parts."""
    return self.update.combine(frozen, aux, trainable)

  def sparse_result(self, base: Mapping[str, jax.Array], state: TrainState) -> dict:
    """The task's result as a sparse delta: {'indices', 'train', 'delta'}."""
    return self.update.export(base, state.trainable)

  # -- steps -----------------------------------------------------------------
  def _loss(self, trainable, frozen, aux, batch, rng):
    forward = getattr(self.update, 'forward', None) or functools.partial(
      updates.plain_forward, self.update
    )
    outputs = forward(
      self.apply_fn, frozen, aux, trainable, batch['image'], train=True, rngs={'dropout': rng}
    )
    return self.task.loss(outputs, batch)

  @property
  def mixes(self) -> bool:
    return bool(self.mix['mixup_alpha'] or self.mix['cutmix_alpha'])

  def _mix(self, batch, rng):
    """Mixup / cutmix of the batch with soft, smoothed targets (timm's Mixup)."""
    images, targets = mix_batch(
      rng,
      batch['image'],
      batch['label'],
      self.num_classes,
      label_smoothing=self.label_smoothing,
      **self.mix,
    )
    return {**batch, 'image': images, 'label': targets}

  def _train_step(self, state: TrainState, frozen, aux, batch, rng):
    rng = jax.random.fold_in(rng, state.step)
    if self.mixes:
      rng, rng_mix = jax.random.split(rng)
      # The training accuracy is against the un-mixed labels: a signal, not a benchmark.
      batch = {**self._mix(batch, rng_mix), 'hard_label': batch['label']}
    (loss, task_metrics), grads = jax.value_and_grad(self._loss, has_aux=True)(
      state.trainable, frozen, aux, batch, rng
    )
    trainable, opt_state = self.update.apply_gradients(
      self.tx, state.trainable, state.opt_state, grads, frozen, aux
    )
    ema = state.ema
    if self.ema_decay:
      d = self.ema_decay
      ema = jax.tree.map(lambda e, p: (d * e + (1 - d) * p).astype(e.dtype), state.ema, trainable)
    metrics = {'loss': loss, **task_metrics, 'lr': self.lr_fn(state.step)}
    return TrainState(state.step + 1, trainable, opt_state, ema), metrics

  def _eval_step(self, params, batch):
    outputs = self.apply_fn({'params': tree_lib.unflat(params)}, batch['image'], train=False)
    return self.task.eval_sums(outputs, batch)

  def evaluate_all(
    self, frozen, aux, state: TrainState, batches: Iterable[Mapping], *, ema: bool = False
  ) -> dict[str, float]:
    """Every metric of the task over `batches` (their padding has 'mask' False): top-1
    accuracy for classes; mean Dice and IoU over images for segmentation.

    `ema=True` evaluates the moving average of the trainable weights.
    """
    if ema and state.ema is None:
      raise ValueError('evaluate(ema=True) needs config.train.ema_decay > 0')
    params = self.compose_jit(frozen, aux, state.ema if ema else state.trainable)
    sums: dict[str, list] = {}
    with progress.bar('evaluation' + (' (EMA)' if ema else '')) as shown:
      for batch in batches:
        out = jax.device_get(self.eval_step(params, self.device_batch(batch)))
        for name, (total, count) in out.items():
          acc = sums.setdefault(name, [0.0, 0])
          acc[0] += float(total)
          acc[1] += int(count)
        shown.update(int(next(iter(out.values()))[1]))
    if not sums or not next(iter(sums.values()))[1]:
      raise ValueError('evaluation saw no example')
    return {name: total / count for name, (total, count) in sums.items()}

  def evaluate(
    self, frozen, aux, state: TrainState, batches: Iterable[Mapping], *, ema: bool = False
  ) -> float:
    """The task's headline metric (`task.metric`: top-1 accuracy, or mDice) over `batches`."""
    return self.evaluate_all(frozen, aux, state, batches, ema=ema)[self.task.metric]


def fit(
  tuner: MaskedFinetuner,
  params: Mapping[str, jax.Array],
  train_batches: Iterator,
  num_steps: int,
  rng: jax.Array,
  *,
  eval_sets: Mapping[str, Callable[[], Iterable]] = (),
  final_sets: Mapping[str, Callable[[], Iterable]] = (),
  eval_every: int = 0,
  log_every: int = 50,
  log: metrics_lib.MetricsLog | None = None,
  restore: Callable[[TrainState], TrainState] | None = None,
  save: Callable[[int, TrainState], None] | None = None,
  save_every: int = 0,
  eval_untuned: bool = False,
) -> dict:
  """Trains for `num_steps` steps of `train_batches`.

  `restore(initial_state)` returns the state to continue from (its `step` says
  where; `train_batches` must start at that step). `save(step, state)` is
  called every `save_every` steps and after the last one, each time only
  after checking that the loss is finite, so a NaN or inf stops the run with
  the last good checkpoint in place.

  `eval_sets` (e.g. validation) are evaluated every `eval_every` steps and at
  the end; `final_sets` (e.g. test) only at the end, so that nothing can be
  chosen on them. With an EMA of the weights, every split is also evaluated
  with the EMA weights, as '<split>_ema'. Each maps a split name to a callable
  returning a fresh iterable of eval batches. Every `log_every` steps the
  loss, accuracy, lr and images/s go to the console and to `log` (the run's
  metrics.jsonl), as do the evaluations. Returns the final state, frozen part
  and aux, the history of evaluations, the final values of the task's headline metric
  (`final`: accuracy, or mDice) and of all its metrics (`final_metrics`: {split: {metric:
  value}}), the best headline value of each `eval_sets` split, and the training wall time.
  `eval_untuned`: every split is evaluated before the first step too (`untuned`: {split:
  {metric: value}}; not on a resumed run).
  """
  log = log or metrics_lib.MetricsLog(None)
  state, frozen, aux = tuner.init(params)
  if restore is not None:
    state = restore(state)
  start = int(jax.device_get(state.step))
  eval_sets, final_sets = dict(eval_sets), dict(final_sets)

  metric = tuner.task.metric

  def evaluate(sets, every: dict | None = None):
    """{split: the headline metric}; `every` receives {split: {metric: value}}."""
    accs = {}
    for name, make in sets.items():
      for key, ema in ((name, False), (f'{name}_ema', True))[: 2 if tuner.ema_decay else 1]:
        values = tuner.evaluate_all(frozen, aux, state, make(), ema=ema)
        accs[key] = values[metric]
        if every is not None:
          every[key] = values
    return accs

  untuned: dict = {}
  if eval_untuned and start == 0:  # the starting point, before any step
    evaluate({**eval_sets, **final_sets}, untuned)
    flat = {f'{k}_{m}': v for k, vals in untuned.items() for m, v in vals.items()}
    log.write('untuned', 0, **flat)
    metrics_lib.say('  untuned: ' + '  '.join(f'{k} {v:.4f}' for k, v in flat.items()))
  history, t0 = [], time.perf_counter()
  t_log, images_since = time.perf_counter(), 0
  shown = None
  for step in range(start + 1, num_steps + 1):
    batch = next(train_batches)
    state, metrics = tuner.train_step(state, frozen, aux, tuner.device_batch(batch), rng)
    n = int(batch['label'].shape[0])
    images_since += n
    if shown is None:  # images of the whole run, for the time remaining
      shown = progress.bar('training', num_steps * n, initial=start * n)
    shown.update(n)
    saving = save is not None and ((save_every and step % save_every == 0) or step == num_steps)
    logging_step = step % log_every == 0 or step == num_steps
    if logging_step or saving:
      m = {k: float(v) for k, v in jax.device_get(metrics).items()}
      if not np.isfinite(m['loss']):
        raise FloatingPointError(
          f'loss is {m["loss"]} at step {step}; lower the lr (config.optim.lr) or check the '
          'data. The last checkpoint written before this step is kept.'
        )
    if saving:
      save(step, state)
    if logging_step:
      now = time.perf_counter()
      speed = images_since / (now - t_log)
      log.write('train', step, **m, images_per_s=speed)
      metrics_lib.say(
        f'  step {step:>6}/{num_steps}  loss {m["loss"]:.4f}  '
        f'{"acc" if metric == "accuracy" else metric} {m[metric]:.3f}  '
        f'lr {m["lr"]:.2e}  {speed:,.0f} img/s'
      )
      t_log, images_since = now, 0
    if eval_sets and eval_every and step % eval_every == 0 and step != num_steps:
      accs = evaluate(eval_sets)
      history.append({'step': step, **accs})
      log.write('eval', step, **accs)
      metrics_lib.say(
        f'  eval at step {step}: ' + '  '.join(f'{k} {v:.4f}' for k, v in accs.items())
      )
  jax.block_until_ready(state)
  if shown is not None:
    shown.close()
  train_seconds = time.perf_counter() - t0
  final_metrics: dict = {}
  final = evaluate({**eval_sets, **final_sets}, final_metrics)
  evaluated = [k for k in final if k.removesuffix('_ema') in eval_sets]
  if eval_sets:
    history.append({'step': num_steps, **{k: final[k] for k in evaluated}})
  # The task's other metrics (segmentation: IoU besides Dice) as '<split>_<metric>'.
  others = {f'{k}_{m}': v for k, vals in final_metrics.items() for m, v in vals.items() if m != metric}
  if final:
    log.write('final', num_steps, **final, **others)
    metrics_lib.say(
      '  final: ' + '  '.join(f'{k} {v:.4f}' for k, v in {**final, **others}.items())
    )
  best = {name: max(h[name] for h in history) for name in evaluated}
  return {
    'state': state,
    'frozen': frozen,
    'aux': aux,
    'history': history,
    'final': final,
    'final_metrics': final_metrics,
    'untuned': untuned,
    'best': best,
    'train_seconds': train_seconds,
  }
