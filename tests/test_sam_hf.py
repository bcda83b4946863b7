"""The Hugging Face ``transformers`` SAM port (``SamModel``'s ``model.safetensors``) read by
gps_jax.load_checkpoint, against ``SamModel`` itself in PyTorch on CPU (random weights),
and its names against both packages' models."""

import jax
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from sam_refs import TINY, state_dict, torch_sam
from segment_anything import sam_model_registry
from transformers import SamConfig, SamMaskDecoderConfig, SamModel, SamPromptEncoderConfig
from transformers import SamVisionConfig

from gps_jax import errors, tree
from gps_jax.models import fitting, sam_hf, sam_torch
from gps_jax.models.sam import SAM, VARIANTS
from gps_jax.weights import load_checkpoint

SAM_CONFIG = {'name': 'sam'}


def hf_sam(c: dict, seed: int = 0) -> SamModel:
  """transformers' SamModel with the sizes of `c` (as `sam_refs.torch_sam`'s) and random
  weights everywhere: LayerNorm scales, biases, position terms (zero-init would hide bugs),
  and the matrices at 1 / sqrt(fan-in) like torch's default init (SamModel's std 0.02 makes
  logits of 1e-3, too small for a 1e-4 tolerance to mean anything)."""
  vision = SamVisionConfig(
    hidden_size=c['embed_dim'], output_channels=c['prompt_dim'], num_hidden_layers=c['depth'],
    num_attention_heads=c['num_heads'], image_size=c['image_size'], patch_size=c['patch_size'],
    mlp_dim=4 * c['embed_dim'], window_size=c['window'],
    global_attn_indexes=list(c['global_blocks']), num_pos_feats=c['prompt_dim'] // 2,
  )  # fmt: skip
  prompt = SamPromptEncoderConfig(
    hidden_size=c['prompt_dim'], image_size=c['image_size'], patch_size=c['patch_size'],
    mask_input_channels=16,
  )  # fmt: skip
  decoder = SamMaskDecoderConfig(
    hidden_size=c['prompt_dim'], num_attention_heads=c['decoder_heads'],
    mlp_dim=c['decoder_mlp_dim'], iou_head_hidden_dim=c['iou_head_hidden'],
  )  # fmt: skip
  torch.manual_seed(seed)
  config = SamConfig(
    vision_config=vision.to_dict(), prompt_encoder_config=prompt.to_dict(),
    mask_decoder_config=decoder.to_dict(),
  )  # fmt: skip
  sam = SamModel(config)
  with torch.no_grad():
    for name, p in sam.named_parameters():
      if 'layer_norm' in name and name.endswith('weight'):
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
      elif p.dim() == 1 or 'rel_pos' in name or 'pos_embed' in name:
        p.copy_(0.2 * torch.randn_like(p))
      elif 'positional_embedding' not in name:  # its own init: scale * randn
        p.copy_(torch.randn_like(p) / p[0].numel() ** 0.5)
  return sam.eval()


def hf_forward(sam: SamModel, images: np.ndarray):
  """(image embeddings NHWC, mask-0 logits [B, 4h, 4w], IoU of mask 0), with no prompt."""
  with torch.no_grad():
    emb = sam.get_image_embeddings(torch.from_numpy(images.transpose(0, 3, 1, 2)))
    out = sam(image_embeddings=emb, multimask_output=False)
  return emb.permute(0, 2, 3, 1).numpy(), out.pred_masks[:, 0, 0].numpy(), out.iou_scores[:, 0, 0].numpy()


def test_safetensors_of_the_port_loads_and_equals_sammodel(tmp_path):
  sam = hf_sam(TINY)
  sam.save_pretrained(tmp_path)  # transformers' own file: names, tied tensors, dtype
  path = tmp_path / 'model.safetensors'
  file_keys = set(load_file(path))
  assert sam_hf.PE in file_keys and any(sam_hf.UNUSED.match(k) for k in file_keys)
  model = SAM(**TINY)
  params = load_checkpoint(path, SAM_CONFIG, model=model)
  assert tree.flat(params).keys() == fitting.expected_shapes(model).keys()

  images = np.random.default_rng(0).normal(size=(2, 80, 80, 3)).astype(np.float32)
  emb_t, masks_t, iou_t = hf_forward(sam, images)
  variables = {'params': params}
  emb, masks, iou = jax.jit(lambda v, x: model.apply(v, x, method=SAM.embed_and_decode))(variables, images)
  np.testing.assert_allclose(emb, emb_t, atol=1e-4, rtol=0)
  np.testing.assert_allclose(masks, masks_t, atol=1e-4, rtol=0)
  np.testing.assert_allclose(iou, iou_t, atol=1e-4, rtol=0)
  assert np.abs(masks_t).max() > 1e-1  # the logits are not trivially small


def test_port_and_official_files_of_the_same_weights_give_the_same_params(tmp_path):
  """The official state dict renamed key by key (`hf_key`) and saved as safetensors loads to
  exactly the official file's params, at the file's input size and at another one (position
  terms resized the same way), whichever name holds the shared positional matrix."""
  official = {k: v for k, v in state_dict(torch_sam(TINY, seed=5)).items()}
  port = {sam_hf.hf_key(k): v for k, v in official.items() if not sam_torch.UNUSED.match(k)}
  tied = dict(port)
  tied[sam_hf.PE_TIED] = tied.pop(sam_hf.PE)  # an older save: the prompt encoder's name only
  for size in (80, 96):
    model = SAM(**{**TINY, 'image_size': size})
    want = sam_torch.sam_params_from_torch(official, model)
    for i, arrays in enumerate((port, tied)):
      save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, tmp_path / f'{i}.safetensors')
      got = tree.flat(load_checkpoint(tmp_path / f'{i}.safetensors', SAM_CONFIG, model=model))
      assert got.keys() == want.keys()
      assert all(np.array_equal(got[p], want[p]) for p in want), size


@pytest.mark.parametrize('variant', sorted(VARIANTS))
def test_names_and_shapes_are_sammodels_for_every_variant(variant):
  """Every parameter of our SAM has a key of transformers' SamModel of that size, at its
  shape; SamModel's other keys are the unused prompt parts and the tied matrix. And `hf_key`
  maps the official model's keys onto SamModel's (the renames of convert_sam_to_hf.py)."""
  dim, depth, heads, global_blocks = VARIANTS[variant]
  model = SAM(embed_dim=dim, depth=depth, num_heads=heads, global_blocks=global_blocks)
  vision = SamVisionConfig(
    hidden_size=dim, num_hidden_layers=depth, num_attention_heads=heads,
    global_attn_indexes=list(global_blocks),
  )  # fmt: skip
  with torch.device('meta'):  # shapes only
    hf = SamModel(SamConfig(vision_config=vision.to_dict())).state_dict()
    official = sam_model_registry[variant]().state_dict()
  hf_shapes = {k: tuple(v.shape) for k, v in hf.items()}
  layout = sam_hf.SAM_HF_LAYOUT
  ours = {layout.file_name(p): layout.file_shape(p, s) for p, s in fitting.expected_shapes(model).items()}
  leftover = set(hf_shapes) - set(ours)
  assert all(sam_hf.UNUSED.match(k) or k == sam_hf.PE_TIED for k in leftover), leftover
  assert ours == {k: hf_shapes[k] for k in ours}
  mapped = {sam_hf.hf_key(k): tuple(v.shape) for k, v in official.items() if not k.startswith('pixel_')}
  assert mapped == {k: s for k, s in hf_shapes.items() if k != sam_hf.PE_TIED}


def test_bad_port_files_are_one_line_naming_the_key(tmp_path):
  sam = hf_sam(TINY, seed=1)
  arrays = {k: v.detach().numpy() for k, v in sam.state_dict().items()}
  model = SAM(**TINY)
  save_file({k: v for k, v in arrays.items() if 'neck.conv2' not in k}, tmp_path / 'partial.safetensors')
  with pytest.raises(ValueError, match=r'(?s)partial\.safetensors does not fit.*missing vision_encoder\.neck\.conv2\.weight.*neck_2/kernel'):
    load_checkpoint(tmp_path / 'partial.safetensors', SAM_CONFIG, model=model)
  differ = {**arrays, sam_hf.PE_TIED: arrays[sam_hf.PE] + 1}
  save_file(differ, tmp_path / 'differ.safetensors')
  with pytest.raises(ValueError, match=r'differ\.safetensors: .*positional_embedding differ') as e:
    load_checkpoint(tmp_path / 'differ.safetensors', SAM_CONFIG, model=model)
  assert errors.user_message(e.value) and '\n' not in errors.user_message(e.value)
