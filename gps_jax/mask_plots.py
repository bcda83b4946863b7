"""The figure of where a run's mask goes: the trainable share per block and per kind of layer.

`plot_mask_shares` draws, from one run's ``mask_stats.json``, the trainable share of each
block and of each kind of layer (attention q / k / v / out, MLP, patch embedding, ...),
split into entries *selected* per neuron (role ``select``) and leaves *trained fully*
(role ``train``: biases, layer scales); `mask_shares` is its table.

Layer kinds come from one ordered table of (regex, kind) on '/'-joined leaf paths,
`KIND_RULES` (first match wins), written for the parameter names of gps_jax's ViT
(vit_jax layout), Swin and ConvNeXt (timm-like names) and the added modules of the PEFT
baselines. The other figures, and the figure size and saving shared by all, are
`gps_jax.plots`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from matplotlib.figure import Figure

from gps_jax.mask_stats import block_of
from gps_jax.plots import DPI, save_figure

# Ordered (regex, kind) on '/'-joined leaf paths; first match wins, searched anywhere in
# the path (re.search, case-insensitive). The PEFT baselines' added leaves come first, so
# that an adapter inside an MLP block counts as an adapter, not as the MLP.
KIND_RULES: tuple[tuple[str, str], ...] = (
  (r'^head/', 'head'),
  (r'lora', 'LoRA'),
  (r'adapter', 'adapter'),
  (r'ssf', 'SSF scale/shift'),
  (r'prompt|vpt', 'prompts'),
  (r'(^|/)(layernorm[^/]*|[^/]*norm[^/]*)/', 'norm'),
  (r'(^|/)(posembed_input|pos_embed[^/]*|cls|cls_token)(/|$)|relative_position_bias', 'pos. / cls'),
  (r'^(embedding|patch_embed/proj|stem/conv)/', 'patch embed'),
  (r'/query/', 'attn q'),
  (r'/key/', 'attn k'),
  (r'/value/', 'attn v'),
  (r'/qkv/', 'attn qkv'),
  (r'(multiheaddotproductattention_\d+/out|attn/proj)/', 'attn out'),
  (r'(mlpblock_\d+/dense_0|mlp/fc1)/', 'MLP fc1'),
  (r'(mlpblock_\d+/dense_1|mlp/fc2)/', 'MLP fc2'),
  (r'conv_dw/', 'depthwise conv'),
  (r'downsample/(reduction|conv)/', 'downsample'),
  (r'(^|/)gamma$', 'layer scale'),
  (r'pre_logits/', 'pre-logits'),
  (r'.*', 'other'),
)
_KIND_RES = tuple((re.compile(rx, re.IGNORECASE), kind) for rx, kind in KIND_RULES)
KINDS = tuple(dict.fromkeys(kind for _, kind in KIND_RULES))  # the display order

# Finer blocks than mask_stats.block_of for the hierarchical models: one bar per Swin /
# ConvNeXt block (stage i, block j), and the stage's downsample on its own.
_FINE_BLOCK = re.compile(
  r'(?:^|/)((?:layers|stages)_\d+/(?:blocks_\d+|downsample)|encoderblock_\d+)(?:/|$)'
)


def layer_kind(path: str) -> str:
  """The kind of layer of a leaf path: 'attn q', 'MLP fc1', 'patch embed', 'norm', ..."""
  for rx, kind in _KIND_RES:
    if rx.search(path):
      return kind
  return 'other'


def block_label(path: str) -> str:
  """The block of a leaf path: 'encoderblock_3', 'layers_1/blocks_0', 'stages_2/downsample',
  else `gps_jax.mask_stats.block_of` ('embedding', 'stem', 'head', ...)."""
  m = _FINE_BLOCK.search(path)
  return m.group(1) if m else block_of(path)


def _natural_key(name: str):
  return [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', name)]


_FIRST_BLOCKS = ('embedding', 'patch_embed', 'stem', 'cls', 'posembed_input', 'Transformer')
_LAST_BLOCKS = ('encoder_norm', 'norm', 'final_norm', 'pre_logits', 'head')


def _block_order(name: str):
  if name in _FIRST_BLOCKS:
    return (0, _FIRST_BLOCKS.index(name), [])
  if name in _LAST_BLOCKS:
    return (2, _LAST_BLOCKS.index(name), [])
  return (1, 0, _natural_key(name))


def mask_shares(stats: Mapping, include_head: bool = False) -> dict:
  """Per block and per kind: {'params', 'selected', 'trained'} entry counts.

  `stats` is a run's mask_stats.json (its 'leaves': per leaf 'role', 'params',
  'trainable'). 'selected' counts the entries of `select` leaves (K per neuron),
  'trained' the leaves trained whole. Blocks in model order (embedding, blocks by
  number, final norm, head); kinds in `KINDS` order, only those present.
  """
  blocks: dict[str, dict] = {}
  kinds: dict[str, dict] = {}
  for path, leaf in stats['leaves'].items():
    kind = layer_kind(path)
    if kind == 'head' and not include_head:
      continue
    selected = leaf['trainable'] if leaf['role'] == 'select' else 0
    trained = leaf['trainable'] if leaf['role'] != 'select' else 0
    for table, key in ((blocks, block_label(path)), (kinds, kind)):
      e = table.setdefault(key, {'params': 0, 'selected': 0, 'trained': 0})
      e['params'] += leaf['params']
      e['selected'] += selected
      e['trained'] += trained
  return {
    'blocks': {b: blocks[b] for b in sorted(blocks, key=_block_order)},
    'kinds': {k: kinds[k] for k in KINDS if k in kinds},
  }


def _pct(n: float, d: float) -> float:
  return 100.0 * n / d if d else 0.0


MASK_FIGSIZE = (13.0, 5.0)


def _stacked_share_bars(ax, table: Mapping[str, Mapping], title: str, rotate: bool) -> None:
  names = list(table)
  sel = [_pct(table[n]['selected'], table[n]['params']) for n in names]
  trn = [_pct(table[n]['trained'], table[n]['params']) for n in names]
  x = range(len(names))
  ax.bar(x, sel, color='tab:blue', label='selected per neuron')
  ax.bar(x, trn, bottom=sel, color='tab:orange', label='trained fully')
  ax.set_xticks(list(x))
  ax.set_xticklabels(names, rotation=60 if rotate else 30, ha='right', fontsize=8)
  ax.set_ylabel('trainable share of its parameters (%)')
  ax.set_title(title, fontsize=10)
  ax.grid(axis='y', alpha=0.3)
  top = max([a + b for a, b in zip(sel, trn)] + [0.0])
  for i, (a, b) in enumerate(zip(sel, trn)):
    if a + b > 0:
      ax.text(i, a + b, f'{a + b:.3g}', ha='center', va='bottom', fontsize=7)
  ax.set_ylim(0, top * 1.3 if top > 0 else 1.0)  # headroom for the labels and the legend


def plot_mask_shares(stats: Mapping, path: str, title: str = '', include_head: bool = False) -> str:
  """Trainable share per block (left) and per kind of layer (right) of one run's mask.

  Each bar is the share (%) of that block's / kind's parameters that train: entries
  selected per neuron (blue) and leaves trained fully (orange, e.g. biases). The head
  (always trained) is left out unless `include_head`. Returns `path`.
  """
  shares = mask_shares(stats, include_head=include_head)
  fig = Figure(figsize=MASK_FIGSIZE, dpi=DPI)
  ax_b, ax_k = fig.subplots(1, 2, gridspec_kw={'width_ratios': [3, 2]})
  blocks = shares['blocks']
  _stacked_share_bars(ax_b, blocks, 'per block', rotate=len(blocks) > 12)
  _stacked_share_bars(ax_k, shares['kinds'], 'per kind of layer', rotate=False)
  ax_k.set_ylabel('')
  ax_b.legend(fontsize=8, loc='upper left', ncol=2)
  k = stats.get('k')
  total = (
    f'backbone: {stats.get("backbone_trainable", 0):,} of {stats.get("backbone_params", 0):,} '
    f'trainable ({stats.get("share_without_head_pct", 0.0):.3f} %)'
  )
  fig.suptitle(' — '.join(x for x in (title, f'K={k}' if k else '', total) if x), fontsize=11)
  fig.tight_layout()
  return save_figure(fig, path)
