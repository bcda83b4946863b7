"""Analytic matmul FLOPs of one ViT train step per image: forward, input gradients, weight gradients.

A multiply-add is 2 FLOPs. With T = tokens (patches + class token), D = hidden size,
M = MLP width, per block:

* forward: q, k, v and out projections 4 * 2TD^2, the attention products QK^T and AV
  2 * 2T^2D, the MLP 2 * 2TDM; plus the patch embedding 2(T-1)(p^2 * 3)D and the head 2DC;
* input gradients: the same products again, except that each attention product has two
  input gradients (2 * 2 * 2T^2D) and the images need none (no patch-embedding term);
* weight gradients: one per kernel, as large as its forward product (the attention
  products have none).

Elementwise work (softmax, LayerNorm, GELU, the optimizer) is left out, so XLA's count of
a compiled step is a little higher. With K-entry weight gradients (`gps_jax.sparse_grad`)
a selected kernel's weight gradient is 2 * T * K * neurons instead of 2 * T * fan-in *
neurons; `k_entry_ratio` is the step's FLOPs with them against full fine-tuning's.
"""

from __future__ import annotations

from typing import Mapping

FIELDS = ('hidden_size', 'mlp_dim', 'num_layers', 'patch_size', 'image_size')


def applies(model: Mapping) -> bool:
  """Whether this count describes `model`: a plain ViT's fields, no pre-logits layer,
  adapters or prompt tokens (a Swin or ConvNeXt config has other fields)."""
  added = ('representation_size', 'adapter_dim', 'vpt_tokens')
  return all(model.get(f) for f in FIELDS) and not any(model.get(f) for f in added)


def step_split(model: Mapping, num_classes: int) -> dict[str, float]:
  """{'forward', 'input_grads', 'weight_grads'}: matmul FLOPs per image of a full step."""
  d, m, layers = model['hidden_size'], model['mlp_dim'], model['num_layers']
  p, size = model['patch_size'], model['image_size']
  patches = (size // p) ** 2
  t = patches + 1
  linear = 2 * t * (4 * d * d + 2 * d * m)  # q, k, v, out, fc1, fc2 of one block
  attention = 2 * 2 * t * t * d  # QK^T and AV
  embed, head = 2 * patches * (p * p * 3) * d, 2 * d * num_classes
  return {
    'forward': layers * (linear + attention) + embed + head,
    'input_grads': layers * (linear + 2 * attention) + head,
    'weight_grads': layers * linear + embed + head,
  }


def k_entry_weight_grads(model: Mapping, k: int, num_classes: int) -> float:
  """Weight-gradient FLOPs per image with K entries per neuron for every kernel but the head."""
  d, m, layers = model['hidden_size'], model['mlp_dim'], model['num_layers']
  patches = (model['image_size'] // model['patch_size']) ** 2
  t = patches + 1
  neurons = 4 * d + m + d  # q, k, v, out; fc1; fc2 (per block)
  return layers * 2 * t * k * neurons + 2 * patches * k * d + 2 * d * num_classes


def k_entry_ratio(model: Mapping, k: int, num_classes: int) -> float:
  """A K-entry GPS step's matmul FLOPs against full fine-tuning's."""
  s = step_split(model, num_classes)
  full = sum(s.values())
  return (s['forward'] + s['input_grads'] + k_entry_weight_grads(model, k, num_classes)) / full
