"""The command line: ``python -m gps_jax.delta inspect|apply|compose|export ...``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from gps_jax.delta.apply import apply_delta, write_npz
from gps_jax.delta.compose import RULES, compose_deltas, format_overlap
from gps_jax.delta.export import export_delta
from gps_jax.delta.inspect import format_inspect, inspect_delta
from gps_jax.delta.store import load
from gps_jax.errors import TRACEBACK_ENV
from gps_jax.errors import run


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog='python -m gps_jax.delta',
    description='Inspect, apply, compose and export gps_jax deltas.',
    epilog='See the docstring of gps_jax/delta/__init__.py for the rules.',
  )
  parser.add_argument(
    '--verbose', action='store_true', help=f'a traceback with an error (or {TRACEBACK_ENV}=1)'
  )
  sub = parser.add_subparsers(dest='command', required=True)
  p = sub.add_parser('inspect', help='entries and bytes per block, K, method, base')
  p.add_argument('delta')
  p.add_argument('--json', action='store_true', help='print the report as JSON')
  p = sub.add_parser('apply', help='base + delta as a dense gps_jax-layout .npz')
  p.add_argument('delta')
  p.add_argument('--base', required=True)
  p.add_argument('--out', required=True)
  p.add_argument('--force', action='store_true', help='apply to a base of another sha256')
  p = sub.add_parser('compose', help='several deltas of one base as one dense .npz')
  p.add_argument('deltas', nargs='+')
  p.add_argument('--base', required=True)
  p.add_argument('--out', required=True)
  p.add_argument('--overlap', choices=RULES, default='sum', help='rule for shared positions')
  p.add_argument('--train-rule', choices=RULES, default=None, help='for trained leaves')
  p.add_argument('--head-from', type=int, default=None, help='0-based delta whose head is used')
  p.add_argument('--no-head', action='store_true', help='write the model without a head')
  p.add_argument('--force', action='store_true', help='use a base of another sha256')
  p = sub.add_parser('export', help='one self-describing .safetensors or .npz file')
  p.add_argument('delta')
  p.add_argument('--out', required=True)
  return parser


def _cli_warn(message: str) -> None:
  print(f'warning: {message}', file=sys.stderr, flush=True)


def _command(args: argparse.Namespace) -> None:
  if args.command == 'inspect':
    report = inspect_delta(load(args.delta, require_manifest=False))
    print(json.dumps(report, indent=1) if args.json else format_inspect(report))
  elif args.command == 'apply':
    d = load(args.delta)
    params = apply_delta(d, args.base, force=args.force, warn=_cli_warn)
    write_npz(args.out, params)
    entries = sum(v.size for v in d.delta.values())
    print(
      f'wrote {args.out}: {len(params)} leaves; {entries:,} selected entries changed in '
      f'{len(d.delta)} leaves, {len(d.train)} trained leaves replaced'
    )
  elif args.command == 'compose':
    deltas = [load(p) for p in args.deltas]
    params, report = compose_deltas(
      deltas,
      args.base,
      overlap=args.overlap,
      train_rule=args.train_rule,
      head_from=args.head_from,
      no_head=args.no_head,
      force=args.force,
      warn=_cli_warn,
    )
    print(format_overlap(report))
    write_npz(args.out, params)
    print(f'wrote {args.out}: {len(params)} leaves from {len(deltas)} deltas')
  elif args.command == 'export':
    export_delta(load(args.delta), args.out)
    print(f'wrote {args.out} ({os.path.getsize(args.out):,} bytes)')


def main(argv: Sequence[str] | None = None) -> int:
  """Runs a command; 1 after one ``error:`` line for a user error (`gps_jax.errors`)."""
  args = _parser().parse_args(argv)
  try:
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every restore at INFO
  except ImportError:
    pass
  return run(lambda: _command(args), verbose=args.verbose)
