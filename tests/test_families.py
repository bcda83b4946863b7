"""Every backbone family on the one path: timm checkpoint -> load -> GPS selection -> sparse steps."""

import json

import ml_collections
import numpy as np
import pytest

torch = pytest.importorskip('torch')
timm = pytest.importorskip('timm')
from safetensors.torch import save_file  # noqa: E402

from gps_jax import experiment  # noqa: E402
from gps_jax import roles as roles_lib  # noqa: E402
from gps_jax import tree as tree_lib  # noqa: E402
from gps_jax import weights  # noqa: E402
from gps_jax.config_defaults import experiment_config  # noqa: E402


def _randomise(m, seed=0):
  torch.manual_seed(seed)
  with torch.no_grad():
    for p in m.parameters():
      p.add_(0.1 * torch.randn_like(p))
  return m.eval()


# family: (timm model, gps_jax model config, {selected leaf: neurons} counted by hand).
def _swin():
  m = timm.models.swin_transformer.SwinTransformer(
    img_size=32, patch_size=4, embed_dim=8, depths=(1, 1), num_heads=(1, 2), window_size=4,
    num_classes=3,
  )  # fmt: skip
  cfg = dict(
    name='swin', image_size=32, patch_size=4, embed_dim=8, depths=(1, 1), num_heads=(1, 2),
    window_size=4, drop_path_rate=0.0,
  )  # fmt: skip
  b0, b1 = 'layers_0/blocks_0/', 'layers_1/blocks_0/'
  neurons = {
    'patch_embed/proj/kernel': 8,  # (4, 4, 3, 8)
    b0 + 'attn/qkv/kernel': 24,  # (8, 24): each of q, k, v's 8 outputs is a neuron
    b0 + 'attn/proj/kernel': 8,
    b0 + 'mlp/fc1/kernel': 32,
    b0 + 'mlp/fc2/kernel': 8,
    'layers_1/downsample/reduction/kernel': 16,  # (4 * 8, 16)
    b1 + 'attn/qkv/kernel': 48,
    b1 + 'attn/proj/kernel': 16,
    b1 + 'mlp/fc1/kernel': 64,
    b1 + 'mlp/fc2/kernel': 16,
  }
  return m, cfg, neurons


def _convnext():
  m = timm.models.convnext.ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), num_classes=3)
  cfg = dict(
    name='convnext', image_size=32, depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), drop_path_rate=0.0
  )
  neurons = {'stem/conv/kernel': 8}  # (4, 4, 3, 8)
  for i, c in enumerate((8, 16, 24, 32)):
    b = f'stages_{i}/blocks_0/'
    if i:
      neurons[f'stages_{i}/downsample/conv/kernel'] = c  # (2, 2, C_in, C)
    neurons[b + 'conv_dw/kernel'] = c  # depthwise (7, 7, 1, C): one neuron per channel
    neurons[b + 'mlp/fc1/kernel'] = 4 * c
    neurons[b + 'mlp/fc2/kernel'] = c
  return m, cfg, neurons


def _vit():
  m = timm.models.vision_transformer.VisionTransformer(
    img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, mlp_ratio=2, num_classes=3
  )
  cfg = dict(
    name='vit', image_size=32, patch_size=8, hidden_size=16, num_layers=1, num_heads=2, mlp_dim=32
  )
  a = 'Transformer/encoderblock_0/MultiHeadDotProductAttention_1/'
  neurons = {
    'embedding/kernel': 16,
    a + 'query/kernel': 16,  # (16, heads 2, head_dim 8): 16 neurons of fan-in 16
    a + 'key/kernel': 16,
    a + 'value/kernel': 16,
    a + 'out/kernel': 16,  # (2, 8, 16): fan-in 16
    'Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel': 32,
    'Transformer/encoderblock_0/MlpBlock_3/Dense_1/kernel': 16,
  }
  return m, cfg, neurons


FAMILIES = {'vit': _vit, 'swin': _swin, 'convnext': _convnext}


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_load_select_and_finetune_each_family(tmp_path, family):
  m, cfg, neurons = FAMILIES[family]()
  _randomise(m)
  path = str(tmp_path / f'{family}.safetensors')
  save_file({k: v.contiguous() for k, v in m.state_dict().items()}, path)

  # The loaded backbone reproduces timm's pre-logits features (a 10-class task head is new).
  model_cfg = ml_collections.ConfigDict({**cfg, 'num_classes': 10})
  params = weights.load_checkpoint(path, model_cfg)
  assert not np.asarray(params['head']['kernel']).any()  # 3-class head dropped: fresh zeros
  x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  _, feats = weights.build_model(model_cfg).apply({'params': params}, x, train=False)
  with torch.no_grad():
    want = m.forward_head(
      m.forward_features(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())), pre_logits=True
    )
  np.testing.assert_allclose(np.asarray(feats), want.numpy(), atol=1e-4, rtol=0)

  # GPS roles: the selected leaves and their neuron counts, counted by hand above.
  roles = roles_lib.assign_roles(params)
  selected = roles_lib.leaves_with_role(roles, 'select')
  assert {p: r.num_neurons for p, r in selected.items()} == neurons

  # The whole run: SupCon selection on real digits, sparse fine-tuning, evaluation.
  c = experiment_config()
  c.model = ml_collections.ConfigDict(
    {**cfg, 'mean': (0.5,) * 3, 'std': (0.5,) * 3, 'checkpoint': path, 'reinit_head': True,
     'require_checkpoint': False}
  )
  c.data.batch_size = 8
  c.data.eval_batch_size = 100
  c.gps.k = 2
  c.train.steps = 3
  c.optim.warmup_epochs = 0
  results, tuned = experiment.run(c, str(tmp_path / 'run'))
  stats = json.load(open(tmp_path / 'run' / 'mask_stats.json'))
  for p, n in neurons.items():
    assert stats['leaves'][p]['neurons'] == n and stats['leaves'][p]['trainable'] == 2 * n, p
  trained = sum(
    r.size for p, r in tree_lib.flat(roles).items() if r.role == 'train' and 'head' not in p
  )
  assert results['trainable_without_head'] == 2 * sum(neurons.values()) + trained
  assert 0.0 <= results['test_accuracy'] <= 1.0 and results['train_steps'] == 3
  # Frozen entries did not move: the fine-tuned norms equal the checkpoint's.
  for p, r in tree_lib.flat(roles).items():
    if r.role == 'freeze':
      np.testing.assert_array_equal(np.asarray(tuned[p]), tree_lib.flat(params)[p], err_msg=p)
