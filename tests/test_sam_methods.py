"""SAM on the one path: its family entry (checkpoint, roles by method, score source) and the
task-loss selection pass, against the segment-anything package in PyTorch."""

import re

import jax
import numpy as np
import pytest
import torch
from sam_refs import MICRO, TINY, state_dict, torch_one, torch_sam

from gps_jax import factors, methods, scoring, tasks
from gps_jax import roles as roles_lib
from gps_jax import tree as tree_lib
from gps_jax import weights
from gps_jax.config_defaults import experiment_config
from gps_jax.errors import UserError
from gps_jax.models import registry, sam_torch
from gps_jax.models.sam import SAM, sam_config


def _model_config(**overrides):
  return sam_config('', num_classes=0, **{**TINY, **overrides})


@pytest.fixture(scope='module')
def tiny():
  sam = torch_sam(TINY, seed=5)
  params = sam_torch.sam_params_from_torch(state_dict(sam), SAM(**TINY))
  return sam, params


def test_load_checkpoint_reads_the_official_pth_and_keeps_fresh_adapters(tiny, tmp_path):
  sam, params = tiny
  path = tmp_path / 'sam_tiny.pth'
  torch.save(sam.state_dict(), path)
  got = tree_lib.flat(weights.load_checkpoint(str(path), _model_config()))
  assert got.keys() == params.keys()
  for p in params:
    np.testing.assert_array_equal(got[p], params[p], err_msg=p)
  # With adapters (the `adapter` method) the file's entries load and each adapter starts as
  # the identity (its up projection zero), from the model's own init.
  with_adapters = tree_lib.flat(weights.load_checkpoint(str(path), _model_config(adapter_dim=4)))
  added = {p for p in with_adapters if re.search(r'/adapter_(attn|mlp)/', p)}
  assert len(added) == TINY['depth'] * 2 * 4  # down / up kernel and bias, two per block
  assert with_adapters.keys() - added == params.keys()
  for p in added:
    if '/up/' in p:
      assert not np.asarray(with_adapters[p]).any(), p
  # A .pth of another model is one error naming the file and the entries.
  torch.save({k: v for k, v in sam.state_dict().items() if 'neck.0' not in k}, tmp_path / 'bad.pth')
  with pytest.raises(ValueError, match=r'bad\.pth does not fit.*\n.*missing image_encoder\.neck\.0'):
    weights.load_checkpoint(str(tmp_path / 'bad.pth'), _model_config())


def _roles(method: str, params: dict, adapter_dim: int = 0):
  c = experiment_config()
  c.model = _model_config(adapter_dim=adapter_dim)
  c.method = method
  shapes = {p: np.shape(v) for p, v in params.items()}
  if adapter_dim:
    shapes = {p: tuple(v.shape) for p, v in tree_lib.flat(
      jax.eval_shape(lambda: SAM(**TINY, adapter_dim=adapter_dim).init(
        jax.random.PRNGKey(0), np.zeros((1, 80, 80, 3), np.float32)))['params']).items()}  # fmt: skip
  dummy = {p: np.zeros(s, np.float32) for p, s in shapes.items()}
  roles = roles_lib.assign_roles(dummy, methods.rules(c))
  return c, shapes, {p: r.role for p, r in tree_lib.flat(roles).items()}


def _trained(role_of):
  return {p for p, r in role_of.items() if r == 'train'}


def test_every_method_on_sam_trains_the_decoder_and_what_it_adds(tiny):
  _, params = tiny
  decoder = {p for p in params if re.match(r'(prompt_encoder|mask_decoder)/', p)}
  pe = 'prompt_encoder/pe_layer/positional_encoding_gaussian_matrix'
  assert pe in decoder
  decoder.discard(pe)  # a buffer in PyTorch: never trained
  _, _, linear = _roles('linear', params)
  assert _trained(linear) == decoder and set(linear.values()) == {'train', 'freeze'}
  _, _, full = _roles('full', params)
  assert _trained(full) == set(params) - {pe}
  _, _, bitfit = _roles('bitfit', params)
  encoder_biases = {
    p for p in params if p.startswith('image_encoder/') and p.endswith('/bias')
    and not re.search(r'/(norm\d|neck_\d)/', p)
  }  # fmt: skip
  assert encoder_biases and _trained(bitfit) == decoder | encoder_biases
  c, shapes, gps = _roles('gps', params)
  assert _trained(gps) - decoder == {p for p in params if p.startswith('image_encoder/') and gps[p] == 'train'}
  assert all(p.startswith('image_encoder/') for p, r in gps.items() if r == 'select')
  assert methods.score_source(c) == 'task_loss'  # the family's source for gps
  c.method = 'random'
  assert methods.score_source(c) == 'random'
  # LoRA on the q and v thirds of the encoder's fused qkv kernels; SSF on the encoder only.
  c, shapes, lora = _roles('lora', params)
  spec = factors.lora_spec(
    shapes, lora, family='sam', targets=(), rank=2, alpha=2.0, fan_in_rules=roles_lib.DEFAULT_FAN_IN_RULES
  )
  assert sorted(spec['fan_in_ndim']) == [f'image_encoder/blocks_{i}/attn/qkv/kernel' for i in range(4)]
  dim = TINY['embed_dim']
  assert spec['columns']['image_encoder/blocks_0/attn/qkv/kernel'] == [*range(dim), *range(2 * dim, 3 * dim)]
  _, shapes, ssf = _roles('ssf', params)
  modules = factors.ssf_spec(shapes, ssf, targets=(), family='sam')['modules']
  assert modules and all(m.startswith('image_encoder/') for m in modules)
  assert 'image_encoder/blocks_0/attn/qkv' in modules and 'image_encoder/neck_1' in modules
  _, _, adapter = _roles('adapter', params, adapter_dim=4)
  assert _trained(adapter) == decoder | {p for p in adapter if '/adapter_' in p}


def test_methods_sam_does_not_have_are_one_error():
  c = experiment_config()
  c.model = _model_config()
  for method in ('vpt_shallow', 'vpt_deep'):
    c.method = method
    with pytest.raises(ValueError, match=f"config.method='{method}' is not defined for model family 'sam'"):
      methods.rules(c)
  with pytest.raises(ValueError, match='VPT is not defined for SAM'):
    SAM(**TINY, vpt_tokens=4).init(jax.random.PRNGKey(0), np.zeros((1, 80, 80, 3), np.float32))
  assert registry.family('sam').task == 'segmentation'


def _torch_task_loss_grads(sam, batches):
  """Sum over batches of the gradient of the batch-mean BCE + soft IoU loss (SAM-Adapter's
  `loss: iou`) of SAM's upsampled mask logits, by torch autograd, in Flax layout."""
  sam.zero_grad()
  for images, masks in batches:
    loss = 0.0
    for image, mask in zip(images, masks):
      _, low, _ = torch_one(sam, image)
      logits = torch.nn.functional.interpolate(low, size=mask.shape, mode='bilinear', align_corners=False)
      t = torch.from_numpy(mask.astype(np.float32))[None, None]
      bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, t)
      p = torch.sigmoid(logits)
      inter = (p * t).sum()
      iou = 1 - inter / (p.sum() + t.sum() - inter)
      loss = loss + (bce + iou) / len(images)  # the batch mean, image by image
    loss.backward()
  out = {}
  for name, value in sam.named_parameters():
    if value.grad is not None and not sam_torch.UNUSED.match(name):
      path = sam_torch.flax_path(name)
      out[path] = sam_torch._convert(path, value.grad.numpy())
  return out


def test_task_loss_scores_are_the_summed_torch_gradients():
  sam = torch_sam(MICRO, seed=5)
  params = sam_torch.sam_params_from_torch(state_dict(sam), SAM(**MICRO))
  rng = np.random.default_rng(0)
  size = MICRO['image_size']
  batches = []
  for _ in range(2):
    images = rng.normal(size=(2, size, size, 3)).astype(np.float32)
    masks = np.zeros((2, size, size), np.uint8)
    masks[0, 4:20, 8:24] = 1
    masks[1, 12:, :10] = 1
    batches.append((images, masks))
  roles = roles_lib.assign_roles(params, methods.rules(_sam_run_config()))
  scores, info = scoring.accumulate_task_loss_scores(
    SAM(**MICRO).apply, params, roles,
    [{'image': i, 'label': m} for i, m in batches], jax.random.PRNGKey(0), tasks.Segmentation(),
  )  # fmt: skip
  assert info['batches'] == 2 and info['images'] == 4
  want = _torch_task_loss_grads(sam, batches)
  select = roles_lib.leaves_with_role(roles, 'select')
  assert set(scores) == set(select) and len(select) > 5
  for p in select:
    scale = np.abs(want[p]).max()
    assert scale > 0, p
    np.testing.assert_allclose(scores[p], want[p], atol=2e-4 * scale, rtol=0, err_msg=p)


def _sam_run_config():
  c = experiment_config()
  c.model = _model_config()
  return c


def test_task_loss_is_refused_for_a_classifier():
  with pytest.raises(ValueError, match="task_loss.*on a classifier.*head_ce"):
    scoring.accumulate_task_loss_scores(None, {}, {}, [], jax.random.PRNGKey(0), tasks.Classification(3))


def test_a_segmentation_model_needs_mask_labels_and_the_other_way_round():
  from gps_jax import backbone

  c = _sam_run_config()  # SAM on the default data (class labels)
  with pytest.raises(UserError, match=r"source='memory' has classification labels, but config\.model\.name='sam' is a segmentation model"):
    backbone.run_task(c, 10)
  c = experiment_config()
  c.data.source = 'kvasir'
  with pytest.raises(UserError, match=r"source='kvasir' has segmentation labels, but config\.model\.name='vit' is a classification model"):
    backbone.run_task(c, 0)
