"""Every method of the registry end to end on one tiny run: what it trains, what it saves,
and that its saved delta applied to the base file is the model the run evaluated."""

import importlib.util
import os

import numpy as np
import pytest

from gps_jax import checkpoint
from gps_jax import delta as delta_lib
from gps_jax import experiment, methods, weights
from gps_jax import tree as tree_lib
from gps_jax.vit_npz import save_vit_npz

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The leaves each method may change (besides the head); every other base leaf must come
# out of training bit-identical.
CHANGES = {
  'lora': r'(query|value)/kernel$',
  'ssf': r'(kernel|scale|bias)$',
  'adapter': r'adapter_(attn|mlp)/',
  'vpt_shallow': r'vpt_prompts$',
  'vpt_deep': r'vpt_prompts$',
  'bitfit': r'bias$',
}


def _demo_config():
  spec = importlib.util.spec_from_file_location('demo', os.path.join(REPO, 'configs', 'demo.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.upstream = None
  c.model.update({'hidden_size': 16, 'num_layers': 2, 'num_heads': 2, 'mlp_dim': 32})
  c.train.steps = 3
  c.data.val_split = ''
  c.optim.warmup_epochs = 0
  c.lora.rank = 2
  c.adapter.dim = 4
  c.vpt.tokens = 3
  return c


@pytest.fixture(scope='module')
def base_file(tmp_path_factory):
  c = _demo_config()
  base = weights.init_params(weights.build_model({**c.model.to_dict(), 'num_classes': 0}))
  path = str(tmp_path_factory.mktemp('base') / 'backbone.npz')
  save_vit_npz(path, base)
  return path, {p: np.asarray(v) for p, v in tree_lib.flat(base).items()}


@pytest.mark.parametrize('method', sorted(CHANGES))
def test_method_trains_its_own_arrays_and_its_delta_rebuilds_the_model(method, base_file, tmp_path):
  import re

  path, base = base_file
  c = _demo_config()
  c.method = method
  c.model.checkpoint = path
  results, final = experiment.run(c, str(tmp_path / 'run'))
  final = {p: np.asarray(v) for p, v in final.items()}
  changed = re.compile(CHANGES[method])
  for p, v in base.items():
    if not changed.search(p):
      np.testing.assert_array_equal(final[p], v, err_msg=f'{method} moved frozen {p}')
  moved = [p for p, v in base.items() if changed.search(p) and not np.array_equal(final[p], v)]
  added = [p for p in final if p not in base and not p.startswith('head/')]
  assert moved or added, f'{method} trained nothing of its own'
  # Its share counts its own arrays: LoRA 2 layers x (q, v) x (16x2 + 2x16).
  if method == 'lora':
    assert results['trainable_without_head'] == 2 * 2 * (16 * 2 + 2 * 16)
  if method == 'adapter':  # 2 blocks x 2 adapters x (down 16x4 + 4, up 4x16 + 16)
    assert results['trainable_without_head'] == 2 * 2 * (16 * 4 + 4 + 4 * 16 + 16)
  # Shares are of the pretrained backbone, whatever the method adds to it.
  backbone = sum(v.size for v in base.values())
  assert results['total_params'] == backbone + 16 * 10 + 10
  np.testing.assert_allclose(
    results['share_without_head_pct'], 100 * results['trainable_without_head'] / backbone, rtol=1e-9
  )
  assert results['trainable'] - results['trainable_without_head'] == 16 * 10 + 10

  ckpt = str(tmp_path / 'run' / 'checkpoint')
  d = delta_lib.load(ckpt)
  assert checkpoint.load_manifest(ckpt)['method'] == method
  assert not d.delta  # no selected entries: only the method's own arrays and the head
  saved = sum(v.size for v in d.train.values()) + sum(v.size for v in d.factors.values())
  assert saved == results['trainable']
  applied = delta_lib.apply_delta(d, path)
  assert set(applied) == set(final)
  for p, v in final.items():
    np.testing.assert_allclose(applied[p], v, rtol=1e-6, atol=1e-6, err_msg=p)


def test_delta_cli_merges_a_lora_delta_into_a_plain_model(base_file, tmp_path):
  """`python -m gps_jax.delta apply` on a LoRA run writes a plain ViT .npz whose logits are
  the run's: the factors are merged, the model has no LoRA left in it."""
  import jax.numpy as jnp

  from cli_run import run_module

  path, _ = base_file
  c = _demo_config()
  c.method, c.model.checkpoint = 'lora', path
  _, final = experiment.run(c, str(tmp_path / 'run'))
  out = str(tmp_path / 'merged.npz')
  proc = run_module('gps_jax.delta', 'apply', str(tmp_path / 'run' / 'checkpoint'), '--base', path, '--out', out)
  assert proc.returncode == 0, proc.stderr
  model_config = {**c.model.to_dict(), 'num_classes': 10}
  model = weights.build_model(model_config)
  merged = weights.load_checkpoint(out, model_config)
  images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 28, 28, 3)), jnp.float32)
  got, _ = model.apply({'params': merged}, images, train=False)
  want, _ = model.apply({'params': tree_lib.unflat(dict(final))}, images, train=False)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_the_registry_has_the_papers_baselines():
  assert {'gps', 'random', 'magnitude', 'full', 'linear', 'bitfit', 'lora', 'ssf', 'adapter',
          'vpt_shallow', 'vpt_deep'} <= set(methods.METHODS)  # fmt: skip
  for name, m in methods.METHODS.items():
    assert m.doc, name
