"""config.train.base_dtype='bfloat16': the frozen base in half the memory, every trainable
array and every merge with the base in float32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gps_jax import factors
from gps_jax import methods
from gps_jax import roles as roles_lib
from gps_jax import sparse
from gps_jax import updates
from gps_jax.config_defaults import experiment_config
from gps_jax.models import ViT
from gps_jax.trainer import MaskedFinetuner

from tiny import TINY, random_params, tiny_shapes


def _tuner(base_dtype, method='gps', grad='off', steps=6):
  shapes = tiny_shapes()
  params = random_params(shapes)
  roles = roles_lib.assign_roles(shapes, methods.get(method).rules)
  rng = np.random.default_rng(0)
  indices = {
    p: np.stack([rng.choice(r.fan_in, 2, replace=False) for _ in range(r.num_neurons)]).astype(
      np.int32
    )
    for p, r in roles_lib.leaves_with_role(roles, 'select').items()
  }
  cfg = experiment_config()
  cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.eps = 1e-2, 0, 1e-4
  cfg.train.base_dtype = base_dtype
  cfg.train.sparse_grad = grad
  update = updates.make(methods.get(method).update or 'sparse', roles, indices, cfg)
  tuner = MaskedFinetuner(
    ViT(**TINY).apply, roles, indices, cfg, num_classes=5, total_steps=steps, update=update
  )
  state, frozen, aux = tuner.init(params)
  rng = np.random.default_rng(1)
  losses = []
  for _ in range(steps):
    batch = {
      'image': rng.normal(size=(8, 8, 8, 3)).astype(np.float32),
      'label': rng.integers(0, 5, size=8).astype(np.int32),
    }
    state, m = tuner.train_step(state, frozen, aux, batch, jax.random.PRNGKey(0))
    losses.append(float(m['loss']))
  return tuner, state, frozen, aux, params, np.asarray(losses)


@pytest.mark.parametrize('grad', ['off', 'on'])
def test_bf16_base_trains_like_f32_with_f32_state(grad):
  tuner, state, frozen, aux, params, losses = _tuner('bfloat16', grad=grad)
  *_, ref_losses = _tuner('float32', grad=grad)
  assert all(
    v.dtype == jnp.bfloat16 for v in frozen.values() if jnp.issubdtype(v.dtype, jnp.floating)
  )
  for p, v in frozen.items():  # the base rounded once, never moved
    np.testing.assert_array_equal(np.asarray(v), np.asarray(jnp.asarray(params[p], jnp.bfloat16)))
  leaves = jax.tree.leaves((state.trainable, state.opt_state))
  assert all(v.dtype in (jnp.float32, jnp.int32) for v in leaves)
  f32_bytes = sum(np.asarray(params[p]).nbytes for p in frozen)
  assert sum(v.nbytes for v in frozen.values()) * 2 == f32_bytes
  np.testing.assert_allclose(losses, ref_losses, rtol=2e-2)  # bf16 rounding of the base
  assert losses[-1] < losses[0]


def test_merges_keep_a_small_delta_whole_on_a_bf16_base():
  """A delta far below bfloat16's resolution of the base survives every merge: the merged
  entry is float32 base + delta, not bfloat16(base + delta) == base."""
  base = jnp.full((4, 3), 1.0, jnp.bfloat16)
  idx = jnp.asarray([[1], [2], [0]], jnp.int32)
  delta = jnp.full((3, 1), 1e-4, jnp.float32)
  merged = sparse.scatter_add(base, idx, delta, 1)
  assert merged.dtype == jnp.float32
  assert float(merged[1, 0]) == np.float32(1.0) + np.float32(1e-4) and float(merged[0, 0]) == 1.0
  path = 'block/query/kernel'
  spec = factors.lora_spec(
    {path: (4, 3)}, {path: 'freeze'}, family='vit', targets=('query',), rank=1, alpha=1.0,
    fan_in_rules=((r'.*', 1),),
  )  # fmt: skip
  lora = {
    f'{path}/{factors.LORA_A}': jnp.full((4, 1), 1e-2),
    f'{path}/{factors.LORA_B}': jnp.full((1, 3), 1e-2),
  }
  out = factors.merge(spec, {path: base}, lora)[path]
  assert out.dtype == jnp.float32 and float(out[0, 0]) == np.float32(1.0) + np.float32(1e-4)


def test_lora_trains_on_a_bf16_base():
  tuner, state, frozen, aux, params, losses = _tuner('bfloat16', method='lora')
  merged = tuner.compose_jit(frozen, aux, state.trainable)
  assert all(merged[p].dtype == jnp.float32 for p in tuner.update.spec['fan_in_ndim'])
  assert losses[-1] < losses[0]


@pytest.mark.slow
def test_demo_cli_with_bf16_base_and_compute(tmp_path):
  """The command line end to end with a bfloat16 base and forward: the model config in the
  delta's manifest says bfloat16, the delta itself is float32."""
  from gps_jax import checkpoint
  from test_cli import _run

  _run(
    tmp_path / 'run', tmp_path / 'cache', '--config.compare_methods=()', '--config.method=gps',
    '--config.train.base_dtype=bfloat16', '--config.train.compute_dtype=bfloat16',
  )  # fmt: skip
  ckpt = str(tmp_path / 'run' / 'checkpoint')
  assert checkpoint.load_manifest(ckpt)['model']['dtype'] == 'bfloat16'
  delta = checkpoint.load_delta(ckpt)
  assert delta['delta'] and all(v.dtype == np.float32 for v in delta['delta'].values())
  assert any(np.abs(v).max() > 0 for v in delta['delta'].values())
