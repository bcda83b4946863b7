"""gps_jax: Gradient-based Parameter Selection (GPS, CVPR 2024) in JAX/Flax.

Selection: one pass of SupCon gradients on the backbone's features, summed;
every neuron keeps its top-K inputs by |score|. Masked fine-tuning: only those
entries (plus head and biases) train; the result is a sparse delta.
"""

from gps_jax.checkpoint import load_delta, save_delta
from gps_jax.losses import cross_entropy, l2_normalize, supcon_loss
from gps_jax.mask_stats import format_table, mask_statistics
from gps_jax.models import ConvNeXt, SwinTransformer, ViT, build_convnext, build_swin, build_vit
from gps_jax.models import convnext_config, swin_config, vit_config
from gps_jax.models.registry import FAMILIES, Family
from gps_jax.methods import METHODS, Method
from gps_jax.roles import DEFAULT_FAN_IN_RULES, GPS_RULES, LeafRole, assign_roles
from gps_jax.scoring import accumulate_scores, magnitude_scores, make_score_step, random_scores
from gps_jax.selection import (
  indices_to_mask,
  element_masks,
  select,
  select_neuron_indices,
  select_neuron_topk,
)
from gps_jax.sparse import combine, scatter_add
from gps_jax.trainer import MaskedFinetuner, TrainState, fit
from gps_jax.updates import DenseMasked, Factored, SparseDelta
from gps_jax.updates import RULES as UPDATE_RULES
from gps_jax.vit_npz import load_vit_npz, resize_posemb, save_vit_npz
from gps_jax.weights import build_model, load_checkpoint, read_state_dict

__version__ = '0.1.0'
