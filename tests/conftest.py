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
