"""The analytic ViT step FLOPs against a hand count and the issue's ViT-B/16 figures."""

import pytest

from gps_jax.models import vit_flops

VIT_B16 = dict(hidden_size=768, mlp_dim=3072, num_layers=12, patch_size=16, image_size=224)


def test_hand_counted_tiny_vit():
  # D 4, M 8, one block, 2x2 patches of a 4x4 image: 4 patches, T 5 tokens, 3 classes.
  model = dict(hidden_size=4, mlp_dim=8, num_layers=1, patch_size=2, image_size=4)
  linear = 2 * 5 * (4 * 4 * 4 + 2 * 4 * 8)  # q, k, v, out: 4 x (5x4 @ 4x4); fc1, fc2
  attention = 2 * 2 * 5 * 5 * 4  # QK^T and AV, 5x5x4 multiply-adds each
  embed, head = 2 * 4 * (2 * 2 * 3) * 4, 2 * 4 * 3
  assert (linear, attention, embed, head) == (1280, 400, 384, 24)
  assert vit_flops.step_split(model, 3) == {
    'forward': 2088,
    'input_grads': 2104,  # both operands of each attention product; no image gradient
    'weight_grads': 1688,
  }
  # K = 1: per token one multiply-add per neuron of q, k, v, out (4 x 4), fc1 (8), fc2 (4),
  # per patch one per embedding neuron (4); the head keeps its dense gradient.
  k_entry = 2 * 5 * (16 + 8 + 4) + 2 * 4 * 4 + 24
  assert vit_flops.k_entry_weight_grads(model, 1, 3) == k_entry
  assert vit_flops.k_entry_ratio(model, 1, 3) == pytest.approx((2088 + 2104 + k_entry) / 5880)


def test_vit_b16_split():
  """Issue 12's figures for ViT-B/16, 224 px, 100 classes: 35.1 / 36.3 / 33.7 GFLOP per
  image, and 0.68x full's FLOPs as the floor with K-entry weight gradients at K = 1."""
  s = vit_flops.step_split(VIT_B16, 100)
  assert [round(s[k] / 1e9, 1) for k in ('forward', 'input_grads', 'weight_grads')] == [
    35.1,
    36.3,
    33.7,
  ]
  assert round(vit_flops.k_entry_ratio(VIT_B16, 1, 100), 2) == 0.68


def test_applies_to_plain_vit_configs_only():
  from gps_jax.models import registry

  vit = registry.family('vit').config('B/16', num_classes=10, image_size=224)
  assert vit_flops.applies(vit)
  assert not vit_flops.applies({**vit.to_dict(), 'adapter_dim': 8})
  assert not vit_flops.applies({**vit.to_dict(), 'vpt_tokens': 10})
  assert not vit_flops.applies(
    registry.family('swin').config(
      next(iter(registry.family('swin').variants)), num_classes=10, image_size=224
    )
  )
