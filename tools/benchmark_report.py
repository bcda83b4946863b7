"""What tools/benchmark.py prints: its method table and the lines below it (selection pass,
eval FLOPs, the analytic FLOPs of a ViT, how the numbers were taken)."""

from __future__ import annotations

import argparse

from gps_jax import config_defaults
from gps_jax import sparse_grad
from gps_jax import step_cost
from gps_jax.models import vit_flops

COLUMNS = (
  'method', 'update rule', 'trainable MiB', 'opt state MiB', 'opt ×', 'GFLOP', 'FLOPs ×',
  'live peak MiB', 'peak ×', 'args / temp / out / alias MiB', 'step ms', 'time ×', 'img/s',
  'eval GFLOP', 'eval ×',
)  # fmt: skip


def _mem_parts(m: dict) -> str:
  if not m:
    return 'n/a'
  return ' / '.join(step_cost.mib(m[k]) for k in ('argument', 'temp', 'output', 'alias'))


def _row(name: str, r: dict) -> list[str]:
  mib, giga, times = step_cost.mib, step_cost.giga, step_cost.times
  return [
    name, r['rule'], mib(r['trainable_bytes']), mib(r['opt_state_bytes']),
    times(r['opt_state_ratio']), giga(r['flops']), times(r['flops_ratio']),
    mib(r['memory_bytes']), times(r['memory_ratio']), _mem_parts(r['memory']),
    step_cost.num(1e3 * r['wall_s']), times(r['wall_ratio']), step_cost.num(r['images_per_s']),
    giga(r['eval_flops']), times(r['eval_flops_ratio']),
  ]  # fmt: skip


def _select_line(rows: dict, args: argparse.Namespace) -> str:
  s, full = rows['gps']['select'], rows['full']
  num, times = step_cost.num, step_cost.times
  chunks = f', backward in {args.score_chunks} chunks' if args.score_chunks > 1 else ''
  return (
    f'Selection pass (SupCon score step, 2 views per image{chunks}): '
    f'{num(s["images_per_s"])} img/s at batch {args.wall_batch} ({2 * args.wall_batch} views), '
    f"{times(s['images_per_s_ratio'])} the images/s of full's train step "
    f'({num(full["images_per_s"])}); {step_cost.giga(s["flops"])} GFLOP, live peak '
    f'{step_cost.mib(s["memory_bytes"])} MiB at batch {args.batch}, '
    f"{times(s['memory_ratio'])} full's step."
  )


def _eval_line(rows: dict, args: argparse.Namespace) -> str:
  gps, full = rows['gps']['eval_flops'], rows['full']['eval_flops']
  verdict = 'equal' if gps == full else 'NOT equal'
  return (
    f'Eval step at batch {args.batch} on the merged parameters: gps {step_cost.giga(gps)} GFLOP, '
    f'full {step_cost.giga(full)} GFLOP: {verdict}.'
  )


def _analytic_line(rows: dict, args: argparse.Namespace) -> str:
  split = vit_flops.step_split(args.model_config, args.classes)
  full = sum(split.values()) * args.batch
  ratio = vit_flops.k_entry_ratio(args.model_config, args.k, args.classes)
  giga = step_cost.giga
  return (
    'Analytic matmul FLOPs per image (gps_jax.models.vit_flops): forward '
    f'{giga(split["forward"])}, input gradients {giga(split["input_grads"])}, weight '
    f'gradients {giga(split["weight_grads"])} GFLOP; a full step at batch {args.batch}: '
    f"{giga(full)} GFLOP (XLA's count above: {giga(rows['full']['flops'])}, with the "
    f'elementwise work); with K-entry weight gradients at K = {args.k}: '
    f'{step_cost.times(ratio)} full.'
  )


def _default_grad() -> str:
  return config_defaults.experiment_config().train.sparse_grad


def render(rows: dict, args: argparse.Namespace, notes: list[str]) -> str:
  """The printed text: header, table, the lines below it and `notes`; `rows` as
  tools/benchmark.py's `summarize` gives them, `args` its parsed flags."""
  extra = f'batch {args.batch} (analysis) / {args.wall_batch} (wall) | K {args.k}'
  head = step_cost.header(args.model_config, args.overrides, extra, args.steps, args.rounds)
  lines = [head, '', step_cost.markdown(COLUMNS, [_row(n, r) for n, r in rows.items()], 2), '']
  if 'gps' in rows:
    if 'select' in rows['gps']:
      lines.append(_select_line(rows, args))
    lines.append(_eval_line(rows, args))
  if vit_flops.applies(args.model_config) and 'full' in rows:
    lines.append(_analytic_line(rows, args))
  lines += [
    f"FLOPs and memory: XLA's analysis of the steps compiled at batch {args.batch}; time: "
    f'median of {args.rounds} rounds x {args.steps} timed steps at batch {args.wall_batch} '
    '(methods round-robin, one warm-up step each per round). Ratios are to full.',
    'Random weights; GPS indices: K random inputs per neuron (the selection scores do not '
    "change a step's cost). K-entry a/b: selected kernels on sparse_grad's K-entry path "
    f'(MAX_K_SHARE = {step_cost.share(sparse_grad.MAX_K_SHARE)}); gps runs sparse_grad=auto '
    f"(the config's default: {_default_grad()}), gps_kentry on, gps_autodiff off.",
    *notes,
  ]
  return '\n'.join(lines)
