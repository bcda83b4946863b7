"""Session set-up shared by every test module.

Import order: with the pinned torch 2.14.1 (its CUDA wheel brings triton) and
tensorflow-cpu 2.21.0, importing triton after TensorFlow crashes the process
with SIGSEGV inside triton/knobs.py; triton first, then TensorFlow, is fine.
timm imports torchvision, which imports torch._dynamo, which imports triton,
so a test module that uses timm, collected after one that imported TensorFlow
(through gps_jax.data), took the whole session down at collection. triton is
imported here, before any test module. gps_jax itself never imports triton:
reading a .pth checkpoint needs `import torch` only, which is safe in either
order (tests/test_weights.py reads .pth files after TensorFlow is loaded).
"""

try:
  import triton  # noqa: F401
except ImportError:  # a CPU-only torch, or no torch: nothing to order
  pass

# The `env` fixture of the delta tests (a tiny ViT base on disk), shared by two modules.
pytest_plugins = ('delta_env',)


def pytest_configure(config):
  """One persistent XLA compilation cache for the whole session, its workers and every
  subprocess they start (command-line runs, notebook kernels): the many runs of the same
  small configs compile each program once. A fresh folder per session (removed at its
  end), so a run never depends on what an earlier session left behind; the compiled
  programs, and so every result, are the same with or without it."""
  import os
  import tempfile

  if 'JAX_COMPILATION_CACHE_DIR' in os.environ:  # a worker: the controller's folder
    return
  path = tempfile.mkdtemp(prefix='gps_jax_test_xla_cache-')
  config._gps_jax_xla_cache = path
  os.environ['JAX_COMPILATION_CACHE_DIR'] = path
  # Every program, however small or quick to compile (JAX's defaults skip those).
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'


def pytest_unconfigure(config):
  import shutil

  path = getattr(config, '_gps_jax_xla_cache', None)
  if path:
    shutil.rmtree(path, ignore_errors=True)
