"""gps_jax.plots: every figure is a PNG of the size it promises; layer kinds for three families."""

import struct

import jax
import numpy as np
import pytest

from gps_jax import mask_stats
from gps_jax import mask_plots
from gps_jax import plots
from gps_jax import roles as roles_lib
from gps_jax import tree as tree_lib
from gps_jax.models.registry import build_model, family
from gps_jax.weights import init_params


def _png_size(path):
  with open(path, 'rb') as f:
    head = f.read(24)
  assert head[:8] == b'\x89PNG\r\n\x1a\n' and head[12:16] == b'IHDR'
  return struct.unpack('>II', head[16:24])


def _leaves(name, variant, **kw):
  """Abstract flat parameters of a family's model (no weights made)."""
  cfg = family(name).config(variant, num_classes=5, image_size=kw.pop('image_size', 224), **kw)
  model = build_model(cfg)
  return tree_lib.flat(jax.eval_shape(lambda r: init_params(model, r), jax.random.PRNGKey(0)))


@pytest.fixture(scope='module')
def vit_stats():
  shapes = _leaves('vit', 'Ti/16', image_size=32, num_layers=2)
  roles = roles_lib.assign_roles(tree_lib.unflat(shapes))
  return mask_stats.mask_statistics(roles, 2)


VIT = {
  'embedding/kernel': 'patch embed',
  'embedding/bias': 'patch embed',
  'cls': 'pos. / cls',
  'Transformer/posembed_input/pos_embedding': 'pos. / cls',
  'Transformer/encoderblock_0/LayerNorm_0/scale': 'norm',
  'Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel': 'attn q',
  'Transformer/encoderblock_0/MultiHeadDotProductAttention_1/key/bias': 'attn k',
  'Transformer/encoderblock_1/MultiHeadDotProductAttention_1/value/kernel': 'attn v',
  'Transformer/encoderblock_1/MultiHeadDotProductAttention_1/out/kernel': 'attn out',
  'Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel': 'MLP fc1',
  'Transformer/encoderblock_0/MlpBlock_3/Dense_1/bias': 'MLP fc2',
  'Transformer/encoder_norm/bias': 'norm',
  'head/kernel': 'head',
}
SWIN = {
  'patch_embed/proj/kernel': 'patch embed',
  'patch_embed/norm/scale': 'norm',
  'layers_0/blocks_0/norm1/bias': 'norm',
  'layers_0/blocks_1/attn/qkv/kernel': 'attn qkv',
  'layers_0/blocks_0/attn/proj/bias': 'attn out',
  'layers_0/blocks_0/attn/relative_position_bias_table': 'pos. / cls',
  'layers_1/blocks_0/mlp/fc1/kernel': 'MLP fc1',
  'layers_1/blocks_0/mlp/fc2/kernel': 'MLP fc2',
  'layers_1/downsample/reduction/kernel': 'downsample',
  'layers_1/downsample/norm/scale': 'norm',
  'norm/scale': 'norm',
  'head/bias': 'head',
}
CONVNEXT = {
  'stem/conv/kernel': 'patch embed',
  'stem/norm/bias': 'norm',
  'stages_0/blocks_0/conv_dw/kernel': 'depthwise conv',
  'stages_0/blocks_2/mlp/fc1/bias': 'MLP fc1',
  'stages_0/blocks_0/mlp/fc2/kernel': 'MLP fc2',
  'stages_0/blocks_0/gamma': 'layer scale',
  'stages_0/blocks_0/norm/scale': 'norm',
  'stages_1/downsample/conv/kernel': 'downsample',
  'final_norm/scale': 'norm',
  'head/kernel': 'head',
}


@pytest.mark.parametrize(
  'name, variant, want',
  [('vit', 'Ti/16', VIT), ('swin', 'T', SWIN), ('convnext', 'T', CONVNEXT)],
)
def test_layer_kinds_of_the_three_families(name, variant, want):
  leaves = _leaves(name, variant)
  assert set(want) <= set(leaves)  # the names above are the models' real ones
  for path, kind in want.items():
    assert mask_plots.layer_kind(path) == kind, path
  # Every leaf of the three backbones has a kind of its own: none falls through to 'other'.
  assert [p for p in leaves if mask_plots.layer_kind(p) == 'other'] == []


def test_added_modules_of_the_baselines_are_their_own_kind():
  assert mask_plots.layer_kind('Transformer/encoderblock_0/adapter_mlp/down/kernel') == 'adapter'
  assert mask_plots.layer_kind('Transformer/encoderblock_0/MlpBlock_3/Dense_0/lora_a') == 'LoRA'
  assert mask_plots.layer_kind('layers_0/blocks_0/mlp/fc1/ssf_scale') == 'SSF scale/shift'
  assert mask_plots.layer_kind('Transformer/encoderblock_3/prompts') == 'prompts'
  assert mask_plots.layer_kind('some/new/thing') == 'other'


def test_block_labels_and_their_order():
  assert mask_plots.block_label('Transformer/encoderblock_11/MlpBlock_3/Dense_0/kernel') == (
    'encoderblock_11'
  )
  assert mask_plots.block_label('layers_2/blocks_5/attn/qkv/kernel') == 'layers_2/blocks_5'
  assert mask_plots.block_label('stages_1/downsample/conv/kernel') == 'stages_1/downsample'
  assert mask_plots.block_label('stem/conv/kernel') == 'stem'
  assert mask_plots.block_label('Transformer/encoder_norm/scale') == 'encoder_norm'
  stats = {
    'leaves': {
      p: {'role': 'freeze', 'params': 1, 'trainable': 0}
      for p in (
        'Transformer/encoderblock_10/a/kernel',
        'Transformer/encoderblock_2/a/kernel',
        'Transformer/encoder_norm/scale',
        'embedding/kernel',
        'cls',
      )
    }
  }
  blocks = list(mask_plots.mask_shares(stats)['blocks'])
  assert blocks == ['embedding', 'cls', 'encoderblock_2', 'encoderblock_10', 'encoder_norm']


def test_mask_shares_count_selected_and_trained_entries(vit_stats):
  shares = mask_plots.mask_shares(vit_stats)
  kinds = shares['kinds']
  # ViT-Ti: width 192, K=2: each of the 192 query neurons keeps 2 of its 192 inputs, the
  # (3, 64) query bias trains whole; the MLP's first layer has 768 neurons.
  assert kinds['attn q'] == {'params': 2 * (192 * 192 + 192), 'selected': 2 * 192 * 2,
                             'trained': 2 * 192}  # fmt: skip
  assert kinds['MLP fc1']['selected'] == 2 * 768 * 2 and kinds['MLP fc1']['trained'] == 2 * 768
  assert kinds['norm']['selected'] == kinds['norm']['trained'] == 0
  assert 'head' not in kinds and 'head' in mask_plots.mask_shares(vit_stats, include_head=True)['kinds']
  assert list(shares['blocks'])[:4] == ['embedding', 'cls', 'posembed_input', 'encoderblock_0']
  total = sum(b['selected'] + b['trained'] for b in shares['blocks'].values())
  assert total == vit_stats['backbone_trainable']


def test_plot_mask_shares_png(vit_stats, tmp_path):
  path = mask_plots.plot_mask_shares(vit_stats, str(tmp_path / 'm' / 'mask.png'), title='ViT-Ti')
  assert _png_size(path) == plots.figure_size_px(mask_plots.MASK_FIGSIZE) == (1300, 500)


def test_plot_accuracy_vs_k_png(tmp_path):
  points = [
    {'series': task, 'k': k, 'mean': 60 + 3 * np.log(k) + off, 'std': 0.5 if k > 1 else None}
    for task, off in (('cub', 0.0), ('nabirds', -5.0))
    for k in (1, 2, 4, 8, 15)
  ]
  path = plots.plot_accuracy_vs_k(points, str(tmp_path / 'k.png'))
  assert _png_size(path) == plots.figure_size_px(plots.K_FIGSIZE) == (700, 450)


def test_plot_accuracy_vs_share_png(tmp_path):
  points = [
    {'method': 'gps', 'share_pct': 0.25, 'mean': 75.2, 'std': 0.4},
    {'method': 'full', 'share_pct': 100.0, 'mean': 65.6, 'std': 1.1},
    {'method': 'linear', 'share_pct': 0.05, 'mean': 53.0, 'std': None},
    {'method': 'bitfit', 'share_pct': 0.16, 'mean': 62.1, 'std': 0.2},
    {'method': 'nothing', 'share_pct': 0.0, 'mean': 10.0, 'std': None},  # cannot be on log x
  ]
  path = plots.plot_accuracy_vs_share(points, str(tmp_path / 's.png'))
  assert _png_size(path) == plots.figure_size_px(plots.SHARE_FIGSIZE) == (750, 500)


@pytest.mark.parametrize('num_tasks, num_methods', [(2, 2), (19, 9)])
def test_plot_per_task_png(tmp_path, num_tasks, num_methods):
  rng = np.random.default_rng(0)
  tasks = [f'task_{i}' for i in range(num_tasks)]
  methods = [f'method_{j}' for j in range(num_methods)]
  values = {
    (t, m): (float(rng.uniform(20, 95)), float(rng.uniform(0, 3))) for t in tasks for m in methods
  }
  del values[(tasks[0], methods[-1])]  # a missing cell leaves a gap
  values[(tasks[-1], methods[0])] = (50.0, None)  # one seed: no error bar
  path = plots.plot_per_task(tasks, methods, values, str(tmp_path / 'bars.png'))
  size = plots.figure_size_px(plots.per_task_figsize(num_tasks, num_methods))
  assert _png_size(path) == size and size[1] == 500
  assert size[0] == (800 if num_tasks == 2 else 2590)  # 2 + 0.14 · 171 inches
