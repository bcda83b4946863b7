"""gps_jax.models.sam against the segment-anything package in PyTorch on CPU (random
weights), and the official checkpoint's converter."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from sam_refs import TINY, state_dict, torch_forward, torch_sam
from segment_anything.modeling.image_encoder import get_rel_pos

from gps_jax import errors, tree
from gps_jax.models import fitting, sam_torch
from gps_jax.models.sam import SAM, VARIANTS, rel_pos_index

def check_parity(c: dict, images: np.ndarray, atol: float):
  sam = torch_sam(c)
  model = SAM(**c)
  params = sam_torch.sam_params_from_torch(state_dict(sam), model)
  emb_t, masks_t, iou_t = torch_forward(sam, images)
  variables = {'params': tree.unflat(params)}
  # One pass for the three outputs (at 1024 px the encoder is most of the test's time).
  emb, masks, iou = jax.jit(lambda v, x: model.apply(v, x, method=SAM.embed_and_decode))(variables, images)
  np.testing.assert_allclose(emb, emb_t, atol=atol, rtol=0)
  np.testing.assert_allclose(masks, masks_t, atol=atol, rtol=0)
  np.testing.assert_allclose(iou, iou_t, atol=atol, rtol=0)
  assert np.abs(masks_t).max() > 10 * atol  # the logits are not trivially small


def test_embeddings_and_mask_logits_equal_segment_anything():
  images = np.random.default_rng(0).normal(size=(2, 80, 80, 3)).astype(np.float32)
  check_parity(TINY, images, atol=1e-4)


def test_rel_pos_and_pos_embed_resizes_equal_torch():
  rng = np.random.default_rng(1)
  for rows, q in ((27, 7), (7, 14), (127, 16)):  # up, and down from a 1024 px table
    table = rng.normal(size=(rows, 8)).astype(np.float32)
    want = get_rel_pos(q, q, torch.from_numpy(table)).numpy()  # SAM's own on-the-fly resize
    got = sam_torch.resize_rel_pos(table, 2 * q - 1)[np.asarray(rel_pos_index(q, q))]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)  # torch: float32 positions
  pos = rng.normal(size=(1, 64, 64, 16)).astype(np.float32)
  for grid in ((16, 16), (80, 80)):
    want = torch.nn.functional.interpolate(
      torch.from_numpy(pos).permute(0, 3, 1, 2), size=grid, mode='bilinear', align_corners=False
    ).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(sam_torch.resize_pos_embed(pos, grid), want, rtol=1e-5, atol=1e-5)


def test_pth_file_loads_with_weights_only_and_bad_files_are_one_line(tmp_path):
  sam = torch_sam(TINY, seed=3)
  path = tmp_path / 'sam_tiny.pth'
  torch.save(sam.state_dict(), path)
  model = SAM(**TINY)
  params = sam_torch.load_sam_pth(str(path), model)
  direct = sam_torch.sam_params_from_torch(state_dict(sam), model)
  assert params.keys() == direct.keys() == fitting.expected_shapes(model).keys()
  assert all(np.array_equal(params[p], direct[p]) for p in params)
  # The unused prompt parts are in the file and left out, nothing else.
  unused = [k for k in sam.state_dict() if sam_torch.UNUSED.match(k)]
  assert unused and all(k.startswith('prompt_encoder.') for k in unused)

  partial = {k: v for k, v in sam.state_dict().items() if 'neck.2' not in k}
  torch.save(partial, tmp_path / 'partial.pth')
  with pytest.raises(errors.UserError, match=r'partial\.pth does not fit.*missing image_encoder\.neck\.2\.weight.*neck_2/kernel'):
    sam_torch.load_sam_pth(str(tmp_path / 'partial.pth'), model)
  torch.save({**sam.state_dict(), 'extra.weight': torch.zeros(2)}, tmp_path / 'extra.pth')
  with pytest.raises(errors.UserError, match=r'unexpected extra\.weight'):
    sam_torch.load_sam_pth(str(tmp_path / 'extra.pth'), model)
  # A pickle that would run code is refused by weights_only, as a one-line user error.
  torch.save({'x': functools.partial(print, 'ran')}, tmp_path / 'code.pth')
  with pytest.raises(errors.UserError, match=r'cannot read .*code\.pth with torch\.load\(weights_only=True\)'):
    sam_torch.load_sam_pth(str(tmp_path / 'code.pth'), model)


@pytest.mark.parametrize('variant', sorted(VARIANTS))
def test_variants_have_the_official_models_shapes(variant):
  from segment_anything import sam_model_registry

  dim, depth, heads, global_blocks = VARIANTS[variant]
  model = SAM(embed_dim=dim, depth=depth, num_heads=heads, global_blocks=global_blocks)
  with torch.device('meta'):  # shapes only: no 90M-600M random numbers
    sam = sam_model_registry[variant]()
  got = {
    sam_torch.flax_path(k): sam_torch._convert(sam_torch.flax_path(k), np.empty(v.shape)).shape
    for k, v in sam.state_dict().items()
    if not sam_torch.UNUSED.match(k)
  }
  assert got == fitting.expected_shapes(model)
  # The checkpoint layout's names and shapes are the inverse of the conversion.
  for k, v in sam.state_dict().items():
    if not sam_torch.UNUSED.match(k):
      path = sam_torch.flax_path(k)
      assert sam_torch.torch_key(path) == k
      assert sam_torch._torch_shape(path, got[path]) == tuple(v.shape), k


@pytest.mark.slow
def test_vit_b_at_1024_equals_segment_anything():
  c = dict(image_size=1024, patch_size=16, embed_dim=768, depth=12, num_heads=12,
           global_blocks=(2, 5, 8, 11), window=14, prompt_dim=256, decoder_heads=8,
           decoder_mlp_dim=2048, iou_head_hidden=256)  # fmt: skip
  images = np.random.default_rng(2).normal(size=(1, 1024, 1024, 3)).astype(np.float32)
  check_parity(c, images, atol=1e-4)


def original_role(name: str, shape: tuple) -> str:
  """The original's classification of an official parameter in its GPS run (independent
  of our rules): FightingFighting/GPS SAM/utils_/pruning.py's
  prune_by_percentile_gradient_perCell (mask 1 = frozen, 0 = trained, per-row top-K =
  selected) on the parameters train.py leaves trainable in --tuning-mode gps."""
  if 'image_encoder' in name:
    if 'norm' in name or 'pos_embed' in name or 'pos' in name:
      return 'freeze'
    if 'head' in name or 'bias' in name:
      return 'train'
    if 'neck' in name and len(shape) == 1:
      return 'freeze'
    return 'select'
  return 'train'


def test_gps_role_rules_are_the_originals_with_its_neurons():
  from gps_jax import roles as roles_lib
  from gps_jax.models.sam import GPS_ROLE_RULES

  sam = torch_sam(TINY)
  shapes = fitting.expected_shapes(SAM(**TINY))
  roles = tree.flat(roles_lib.assign_roles(
    {p: jax.ShapeDtypeStruct(s, jnp.float32) for p, s in shapes.items()}, GPS_ROLE_RULES
  ))  # fmt: skip
  parameters = dict(sam.named_parameters())  # the rest of the state dict are buffers
  seen = set()
  for name, value in sam.state_dict().items():
    if sam_torch.UNUSED.match(name):
      continue
    role = roles[sam_torch.flax_path(name)]
    want = original_role(name, tuple(value.shape)) if name in parameters else 'freeze'
    assert role.role == want, name
    if role.role == 'select':  # torch rows are neurons: (out, in...) -> per-row top-K
      assert (role.num_neurons, role.fan_in) == (value.shape[0], value[0].numel()), name
    seen.add(role.role)
  assert seen == {'select', 'train', 'freeze'}
