"""The one trainer on a segmentation task: gps_jax.tasks.Segmentation with a tiny SAM, its
GPS roles and a sparse delta, on synthetic Kvasir-SEG images."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from sam_refs import MICRO, torch_sam

from gps_jax import roles as roles_lib
from gps_jax import seg_metrics, tasks, trainer
from gps_jax import tree as tree_lib
from gps_jax.config_defaults import experiment_config
from gps_jax.data import kvasir
from gps_jax.models import sam_torch
from gps_jax.models.sam import GPS_ROLE_RULES, SAM


def test_segmentation_loss_and_metrics_against_torch_and_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(scale=3.0, size=(3, 10, 10)).astype(np.float32)
  target = np.zeros((3, 40, 40), bool)
  target[0, 5:30, 8:20] = True
  target[1, :, :3] = True  # image 2: empty target
  up = torch.nn.functional.interpolate(
    torch.from_numpy(logits)[:, None], size=(40, 40), mode='bilinear', align_corners=False
  )[:, 0].numpy()
  np.testing.assert_allclose(tasks.upsample_logits(jnp.asarray(logits), (40, 40)), up, atol=1e-5)
  task = tasks.Segmentation()
  batch = {'label': jnp.asarray(target)}
  loss, train = task.loss((jnp.asarray(logits),), batch)
  t = target.astype(np.float64)
  x = up.astype(np.float64)
  bce = np.mean(np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x))))
  p = 1 / (1 + np.exp(-x))
  inter = (p * t).sum((1, 2))
  soft_iou = np.mean(1 - inter / ((p + t).sum((1, 2)) - inter))
  np.testing.assert_allclose(loss, bce + soft_iou, rtol=1e-5)
  np.testing.assert_allclose(train['dice'], seg_metrics.mean_dice(up > 0, target), rtol=1e-6)
  # Evaluation: per-image sums over the real examples; the padded third one is left out.
  sums = task.eval_sums((jnp.asarray(logits),), {**batch, 'mask': jnp.asarray([True, True, False])})
  assert int(sums['dice'][1]) == int(sums['iou'][1]) == 2
  np.testing.assert_allclose(sums['dice'][0] / 2, seg_metrics.mean_dice(up[:2] > 0, target[:2]), rtol=1e-6)
  np.testing.assert_allclose(sums['iou'][0] / 2, seg_metrics.mean_iou(up[:2] > 0, target[:2]), rtol=1e-6)


def _config(mode: str):
  c = experiment_config()
  c.method = 'gps'
  c.optim.name = 'adamw'
  c.optim.lr = 1e-3
  c.optim.weight_decay = 0.0
  c.optim.grad_clip_norm = 0.0
  c.train.update_mode = mode
  return c


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('kvasir'))
  kvasir.write_synthetic(root, 6, seed=0)
  images, masks, _ = kvasir.load_split(root, 'train', MICRO['image_size'], seed=0)
  model = SAM(**MICRO)
  params = sam_torch.sam_params_from_torch(
    {k: v.detach().numpy() for k, v in torch_sam(MICRO).state_dict().items()}, model
  )
  roles = roles_lib.assign_roles(params, GPS_ROLE_RULES)
  rng = np.random.default_rng(1)
  indices = {
    p: jnp.asarray(np.argsort(rng.random((r.num_neurons, r.fan_in)), axis=1)[:, :1].astype(np.int32))
    for p, r in roles_lib.leaves_with_role(roles, 'select').items()
  }
  batch = {'image': jnp.asarray((images - 0.5) / 0.5), 'label': jnp.asarray(masks)}
  return model, params, roles, indices, batch


def _train(setup, mode, steps):
  model, params, roles, indices, batch = setup
  tuner = trainer.MaskedFinetuner(
    model.apply, roles, indices, _config(mode), num_classes=0, total_steps=steps,
    mode=mode, task=tasks.Segmentation(),
  )  # fmt: skip
  state, frozen, aux = tuner.init(params)
  losses = []
  for _ in range(steps):
    state, m = tuner.train_step(state, frozen, aux, batch, jax.random.PRNGKey(0))
    losses.append(float(m['loss']))
  return tuner, state, frozen, aux, losses


@pytest.mark.slow
def test_sparse_delta_trains_sam_as_the_dense_masked_update(setup):
  _, params, roles, indices, batch = setup
  sparse, s_state, s_frozen, s_aux, s_losses = _train(setup, 'sparse', 3)
  dense, d_state, d_frozen, d_aux, d_losses = _train(setup, 'dense', 3)
  np.testing.assert_allclose(s_losses, d_losses, rtol=1e-4)
  assert s_losses[-1] < s_losses[0]
  got = sparse.compose_jit(s_frozen, s_aux, s_state.trainable)
  want = dense.compose_jit(d_frozen, d_aux, d_state.trainable)
  for p, role in tree_lib.flat(roles).items():
    np.testing.assert_allclose(got[p], want[p], atol=2e-5, err_msg=p)
    if role.role == 'freeze':  # bit for bit
      np.testing.assert_array_equal(np.asarray(got[p]), np.asarray(params[p]), err_msg=p)
  # Only the K = 1 selected entry of each neuron moved in a selected kernel.
  p = 'image_encoder/blocks_0/attn/qkv/kernel'
  moved = np.asarray(got[p]) != np.asarray(params[p])
  assert moved.sum(axis=0).max() == 1 and moved.any()
  metrics = sparse.evaluate_all(
    s_frozen, s_aux, s_state, [{**batch, 'mask': jnp.ones(len(batch['label']), bool)}]
  )
  assert set(metrics) == {'dice', 'iou'} and all(0.0 <= v <= 1.0 for v in metrics.values())
  assert sparse.evaluate(s_frozen, s_aux, s_state, [batch]) == pytest.approx(metrics['dice'])


def test_mixup_is_refused_for_segmentation(setup):
  model, _, roles, indices, _ = setup
  c = _config('sparse')
  c.train.mixup = 0.8
  with pytest.raises(ValueError, match='mixup'):
    trainer.MaskedFinetuner(
      model.apply, roles, indices, c, num_classes=0, total_steps=1, task=tasks.Segmentation()
    )
