"""A gps_jax command line run in a subprocess, the way a user runs it (tests/ is on sys.path)."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_module(module: str, *args: str, env=None) -> subprocess.CompletedProcess:
  """`python -m <module> <args>` from the repository root; stdout / stderr captured as text."""
  return subprocess.run(
    [sys.executable, '-m', module, *args],
    check=False,
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
    env=env,
  )
