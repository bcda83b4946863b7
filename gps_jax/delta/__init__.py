"""Delta tools: inspect, apply, compose and export the sparse result of a run.

  python -m gps_jax.delta inspect RUN/checkpoint [--json]
  python -m gps_jax.delta apply RUN/checkpoint --base BASE --out tuned.npz [--force]
  python -m gps_jax.delta compose D1 D2 ... --base BASE --out merged.npz
      [--overlap sum|mean|error] [--train-rule sum|mean|error]
      [--head-from N | --no-head] [--force]
  python -m gps_jax.delta export RUN/checkpoint --out delta.safetensors|delta.npz

A delta is what `gps_jax.experiment.run` writes: the orbax directory
``checkpoint/`` (int32 (neurons, K) `indices` and `delta` values of every
selected leaf, and the `train` leaves: head, biases, ...) and its manifest
``checkpoint.manifest.json`` (see `gps_jax.checkpoint`: method, K, model config,
the base file's path and SHA-256, fan_in_ndim and shape of every delta leaf).
Every command also reads an exported file (below) in place of the directory.

apply
  Loads BASE with `gps_jax.weights.load_checkpoint` for the manifest's model
  config (num_classes from the delta's head), adds each delta at its indices
  with `gps_jax.sparse.scatter_add` (the manifest's fan_in_ndim), replaces the
  trained leaves by the delta's values and writes a dense gps_jax-layout
  ``.npz`` (`gps_jax.vit_npz.save_vit_npz`): the fine-tuned model of the run.
  BASE must be the file the run started from: its SHA-256 must equal the
  manifest's, else a ValueError names both hashes; ``--force`` applies anyway
  with a warning (also to a delta trained from a random init, which has none).

compose
  Several deltas of one base (same SHA-256) and one architecture (the model
  configs may differ only in num_classes, the checkpoint fields and the
  dropout / drop-path rates) are combined into one dense model. Every delta is
  a change from the base: on a selected leaf, its values at its (neuron, input)
  positions; on a trained leaf, ``trained - base`` on the whole leaf. A
  position shared by two or more deltas combines by a rule:

  * ``sum``: the changes add up (task arithmetic);
  * ``mean``: the average of the changes of the deltas that share the position;
    a position of one delta keeps that delta's change;
  * ``error``: refused; nothing is written.

  ``--overlap`` is the rule of the selected entries; the per-leaf and total
  counts of shared positions are printed. ``--train-rule`` (default: the
  ``--overlap`` rule) is the rule of the trained leaves other than the head
  (biases, layer-scale gammas, ...): every delta trains every bias, so with
  ``error`` two deltas with biases are refused; pass ``--train-rule sum|mean``.
  A leaf must be of one kind in all deltas (selected, or trained in full).

  Heads are task-specific and never combined: with one head among the deltas
  (or all heads equal), it is used; with different heads, compose refuses
  unless ``--head-from N`` (0-based, in the order given) picks one delta's head
  or ``--no-head`` writes the model without a head (a backbone, as the demo's
  upstream cache: `load_checkpoint` gives it a fresh head).

export
  One self-describing file: ``<leaf>/indices`` (int32) and ``<leaf>/values``
  of every selected leaf, ``<leaf>`` of every trained leaf, and the manifest
  as JSON: in ``.safetensors`` the metadata entry ``gps_jax_manifest``; in
  ``.npz`` the uint8 array ``__manifest__`` of its UTF-8 bytes (every member a
  plain array: ``np.load(allow_pickle=False)`` reads it). `read_export` returns
  (arrays, manifest).

Modules: `store` (`Delta`, `load`, `validate`), `inspect`, `apply`, `compose`,
`export` and `cli` (the command line; `python -m gps_jax.delta` runs its `main`).
Errors reading a delta are a FileNotFoundError or a ValueError naming the path;
the command line prints them as one ``error: ...`` line and exits with 1.
"""

from gps_jax.delta.apply import apply_delta, apply_to, check_base, load_base, write_npz
from gps_jax.delta.cli import main
from gps_jax.delta.compose import (
  NON_ARCH_KEYS,
  RULES,
  check_compatible,
  compose_deltas,
  format_overlap,
  overlap_report,
  position_counts,
)
from gps_jax.delta.export import (
  EXPORT_SUFFIXES,
  MANIFEST_MEMBER,
  SAFETENSORS_KEY,
  export_arrays,
  export_delta,
  is_export,
  read_export,
  split_export,
)
from gps_jax.delta.inspect import format_inspect, inspect_delta
from gps_jax.delta.store import Delta, load, validate

__all__ = [
  'EXPORT_SUFFIXES',
  'MANIFEST_MEMBER',
  'NON_ARCH_KEYS',
  'RULES',
  'SAFETENSORS_KEY',
  'Delta',
  'apply_delta',
  'apply_to',
  'check_base',
  'check_compatible',
  'compose_deltas',
  'export_arrays',
  'export_delta',
  'format_inspect',
  'format_overlap',
  'inspect_delta',
  'is_export',
  'load',
  'load_base',
  'main',
  'overlap_report',
  'position_counts',
  'read_export',
  'split_export',
  'validate',
  'write_npz',
]
