"""Tests of gps_jax.mask_stats: the ViT-B/16 figures of the reference and a hand-counted model."""

import jax
import jax.numpy as jnp
import pytest

from gps_jax import mask_stats
from gps_jax.models import ViT
from gps_jax.roles import assign_roles


def shapes_of(model):
  s = model.image_size
  return jax.eval_shape(
    lambda r: model.init(r, jnp.zeros((1, s, s, 3)), train=False), jax.random.PRNGKey(0)
  )['params']


@pytest.fixture(scope='module')
def vit_b16_roles():
  model = ViT(
    num_classes=100,
    patch_size=16,
    hidden_size=768,
    num_layers=12,
    num_heads=12,
    mlp_dim=3072,
    image_size=224,
  )
  return assign_roles(shapes_of(model))


# K -> trainable share of the backbone in %, to 3 significant digits (reference section 1).
REFERENCE_SHARES = {1: '0.195', 2: '0.293', 15: '1.56', 20: '2.05'}


@pytest.mark.parametrize('k', sorted(REFERENCE_SHARES))
def test_vit_b16_reference_figures(vit_b16_roles, k):
  stats = mask_stats.mask_statistics(vit_b16_roles, k)
  assert stats['k'] == k
  assert stats['neurons'] == 83_712
  assert stats['backbone_params'] == 85_798_656
  # Each neuron trains K weights and its bias: 83,712 bias entries.
  assert stats['selected_entries'] == 83_712 * k
  assert stats['backbone_trainable'] == 83_712 * (k + 1)
  assert f'{stats["share_without_head_pct"]:.3g}' == REFERENCE_SHARES[k]
  # The head: 768 x 100 + 100, fully trained.
  head = 768 * 100 + 100
  assert stats['total_params'] == 85_798_656 + head
  assert stats['trainable'] == 83_712 * (k + 1) + head
  assert stats['share_pct'] == pytest.approx(100 * (83_712 * (k + 1) + head) / (85_798_656 + head))
  assert stats['blocks']['head'] == {'params': head, 'trainable': head, 'share_pct': 100.0}

  # Per block: 6,912 neurons (q, k, v, out: 4 x 768, MLP: 3,072 + 768) and as many biases.
  per_block_params = 4 * (768 * 768 + 768) + 2 * 768 * 3072 + 3072 + 768 + 4 * 768
  for i in range(12):
    name = f'encoderblock_{i}'
    neurons = sum(
      leaf['neurons']
      for p, leaf in stats['leaves'].items()
      if f'/{name}/' in p and leaf['role'] == 'select'
    )
    assert neurons == 6_912, name
    assert stats['blocks'][name]['params'] == per_block_params
    assert stats['blocks'][name]['trainable'] == 6_912 * (k + 1)
  # Patch embedding: 768 neurons of fan-in 16*16*3, plus its bias.
  emb = stats['leaves']['embedding/kernel']
  assert (emb['neurons'], emb['fan_in'], emb['trainable']) == (768, 768, 768 * k)
  assert stats['blocks']['embedding']['trainable'] == 768 * (k + 1)
  # Frozen: class token, position embedding, final norm.
  assert stats['blocks']['cls'] == {'params': 768, 'trainable': 0, 'share_pct': 0.0}
  assert stats['blocks']['posembed_input']['trainable'] == 0
  assert stats['blocks']['posembed_input']['params'] == 197 * 768
  assert stats['blocks']['encoder_norm']['trainable'] == 0

  table = mask_stats.format_table(stats)
  assert f'{85_798_656 + head:,}' in table
  assert f'{83_712 * (k + 1) + head:,}' in table
  assert f'{85_798_656:,}' in table
  assert f'{83_712 * (k + 1):,}' in table
  assert f'{stats["share_without_head_pct"]:.3f}' in table
  assert 'encoderblock_11' in table


def test_tiny_model_hand_counted():
  model = ViT(
    num_classes=5, patch_size=4, hidden_size=16, num_layers=2, num_heads=2, mlp_dim=32, image_size=8
  )
  stats = mask_stats.mask_statistics(assign_roles(shapes_of(model)), 3)
  # Hand count, D = 16, MLP 32, 2 heads of 8, (8 / 4)^2 + 1 = 5 tokens, 5 classes.
  embedding = 4 * 4 * 3 * 16 + 16  # 784; 16 neurons of fan-in 48
  cls, pos = 16, 5 * 16  # frozen
  block = (
    2 * 2 * 16  # two LayerNorms (frozen)
    + 3 * (16 * 2 * 8 + 2 * 8)  # q, k, v kernels + biases
    + 2 * 8 * 16
    + 16  # out
    + 16 * 32
    + 32
    + 32 * 16
    + 16
  )  # MLP
  assert block == 2224
  block_neurons = 3 * 16 + 16 + 32 + 16  # 112, and 112 bias entries
  encoder_norm = 2 * 16
  head = 16 * 5 + 5
  backbone = embedding + cls + pos + 2 * block + encoder_norm
  assert stats['backbone_params'] == backbone == 5360
  assert stats['total_params'] == backbone + head
  assert stats['neurons'] == 16 + 2 * block_neurons
  assert stats['selected_entries'] == 3 * (16 + 2 * block_neurons)
  assert stats['backbone_trainable'] == 4 * (16 + 2 * block_neurons)  # K weights + 1 bias
  assert stats['trainable'] == 4 * 240 + head
  assert stats['share_without_head_pct'] == pytest.approx(100 * 960 / 5360)
  assert stats['blocks']['encoderblock_1'] == {
    'params': 2224,
    'trainable': 4 * 112,
    'share_pct': pytest.approx(100 * 448 / 2224),
  }
  assert stats['blocks']['head']['share_pct'] == 100.0
  leaf = stats['leaves']['Transformer/encoderblock_0/MultiHeadDotProductAttention_1/out/kernel']
  assert leaf == {
    'role': 'select',
    'shape': [2, 8, 16],
    'params': 256,
    'trainable': 48,
    'neurons': 16,
    'fan_in': 16,
  }
  assert stats['leaves']['cls'] == {
    'role': 'freeze',
    'shape': [1, 1, 16],
    'params': 16,
    'trainable': 0,
  }
  assert stats['leaves']['head/bias']['trainable'] == 5
  assert sum(b['params'] for b in stats['blocks'].values()) == stats['total_params']
  assert sum(b['trainable'] for b in stats['blocks'].values()) == stats['trainable']


def test_block_of():
  assert (
    mask_stats.block_of('Transformer/encoderblock_3/MlpBlock_3/Dense_0/kernel') == 'encoderblock_3'
  )
  assert mask_stats.block_of('Transformer/encoder_norm/scale') == 'encoder_norm'
  assert mask_stats.block_of('Transformer/posembed_input/pos_embedding') == 'posembed_input'
  assert mask_stats.block_of('embedding/kernel') == 'embedding'
  assert mask_stats.block_of('head/bias') == 'head'
  assert mask_stats.block_of('cls') == 'cls'
  # SAM: the encoder's blocks, the rest of the encoder, and the whole decoder as one.
  assert mask_stats.block_of('image_encoder/blocks_11/attn/qkv/kernel') == 'blocks_11'
  assert mask_stats.block_of('image_encoder/neck_0/kernel') == 'image_encoder'
  assert mask_stats.block_of('mask_decoder/transformer/layers_1/mlp/lin1/kernel') == 'mask_decoder'
  assert mask_stats.block_of('layers_0/blocks_1/attn/qkv/kernel') == 'layers_0'  # Swin
