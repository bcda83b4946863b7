"""The tiny SAM of the SAM tests and the segment-anything package's model as the reference
(tests/ is on sys.path under pytest; no tests here)."""

import functools

import numpy as np
import torch
from segment_anything import modeling as sam_torch_lib

# Windowed blocks whose 10 x 10 grid is padded to 12 x 12 (window 4), and two global blocks.
TINY = dict(image_size=80, patch_size=8, embed_dim=32, depth=4, num_heads=2, global_blocks=(1, 3),
            window=4, prompt_dim=32, decoder_heads=2, decoder_mlp_dim=64, iou_head_hidden=24)  # fmt: skip
# Smaller still, for the tests that train or differentiate (their compiles dominate, and grow
# with the number of parameter leaves): 32 px, a 4 x 4 token grid in 2 x 2 windows, two
# blocks (one global), one two-way block and one mask token (the one the no-prompt path uses).
MICRO = dict(image_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, global_blocks=(1,),
             window=2, prompt_dim=16, decoder_depth=1, decoder_heads=2, decoder_mlp_dim=32,
             iou_head_hidden=8, num_multimask_outputs=0)  # fmt: skip


def torch_sam(c: dict, seed: int = 0):
  """The package's Sam with the sizes of `c` and random weights everywhere (LayerNorm
  scales, relative position tables and embeddings included: zero-init would hide bugs)."""
  grid = c['image_size'] // c['patch_size']
  torch.manual_seed(seed)
  sam = sam_torch_lib.Sam(
    image_encoder=sam_torch_lib.ImageEncoderViT(
      depth=c['depth'], embed_dim=c['embed_dim'], img_size=c['image_size'], mlp_ratio=4,
      norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6), num_heads=c['num_heads'],
      patch_size=c['patch_size'], qkv_bias=True, use_rel_pos=True,
      global_attn_indexes=c['global_blocks'], window_size=c['window'], out_chans=c['prompt_dim'],
    ),
    prompt_encoder=sam_torch_lib.PromptEncoder(
      embed_dim=c['prompt_dim'], image_embedding_size=(grid, grid),
      input_image_size=(c['image_size'], c['image_size']), mask_in_chans=16,
    ),
    mask_decoder=sam_torch_lib.MaskDecoder(
      num_multimask_outputs=c.get('num_multimask_outputs', 3),
      transformer=sam_torch_lib.TwoWayTransformer(
        depth=c.get('decoder_depth', 2), embedding_dim=c['prompt_dim'], mlp_dim=c['decoder_mlp_dim'],
        num_heads=c['decoder_heads'],
      ),
      transformer_dim=c['prompt_dim'], iou_head_depth=3, iou_head_hidden_dim=c['iou_head_hidden'],
    ),
  )  # fmt: skip
  with torch.no_grad():
    for name, p in sam.named_parameters():
      if name.endswith('norm1.weight') or 'norm' in name and name.endswith('weight'):
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
      elif p.dim() == 1 or 'rel_pos' in name or 'pos_embed' in name:
        p.copy_(0.2 * torch.randn_like(p))
  return sam.eval()


def torch_one(sam, image: np.ndarray):
  """(image embedding [1, C, h, w], mask-0 logits [1, 1, 4h, 4w], IoU [1, 1]) of one HWC image,
  with no prompt, as the polyp experiment calls SAM (autograd follows it, unless disabled)."""
  x = torch.from_numpy(image.transpose(2, 0, 1)[None])
  emb = sam.image_encoder(x)
  sparse, dense = sam.prompt_encoder(points=None, boxes=None, masks=None)
  masks, iou = sam.mask_decoder(
    image_embeddings=emb, image_pe=sam.prompt_encoder.get_dense_pe(),
    sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False,
  )  # fmt: skip
  return emb, masks, iou


def torch_forward(sam, images: np.ndarray):
  """(image embeddings NHWC, mask-0 logits [B, 4h, 4w], IoU of mask 0) one image at a time."""
  embs, masks, ious = [], [], []
  with torch.no_grad():
    for image in images:
      emb, m, iou = torch_one(sam, image)
      embs.append(emb[0].permute(1, 2, 0).numpy())
      masks.append(m[0, 0].numpy())
      ious.append(iou[0, 0].item())
  return np.stack(embs), np.stack(masks), np.asarray(ious)


def state_dict(sam) -> dict:
  return {k: v.detach().numpy() for k, v in sam.state_dict().items()}
