"""gps_jax.weights: timm ViT checkpoints (.safetensors, .pth) and .npz against timm in PyTorch."""

import os
import pickle
import zipfile

import ml_collections
import numpy as np
import pytest

torch = pytest.importorskip('torch')
timm = pytest.importorskip('timm')
from safetensors.torch import save_file  # noqa: E402

from gps_jax import tree as tree_lib  # noqa: E402
from gps_jax import weights  # noqa: E402
from gps_jax.vit_npz import save_vit_npz  # noqa: E402

SMALL = dict(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, mlp_ratio=2)


def _timm_vit(num_classes=5, seed=0, **kw):
  torch.manual_seed(seed)
  cfg = {**SMALL, **kw}
  m = timm.models.vision_transformer.VisionTransformer(num_classes=num_classes, **cfg)
  with torch.no_grad():  # every tensor random and non-trivial (timm inits zeros and ones)
    for name, p in m.named_parameters():
      if name.endswith('norm1.weight') or name.endswith('norm2.weight') or name == 'norm.weight':
        p.copy_(1 + 0.2 * torch.randn_like(p))
      else:
        p.copy_(0.2 * torch.randn_like(p))
  return m.eval()


def _config(num_classes=5, image_size=32, **kw):
  c = dict(
    name='vit',
    num_classes=num_classes,
    patch_size=SMALL['patch_size'],
    hidden_size=SMALL['embed_dim'],
    num_layers=SMALL['depth'],
    num_heads=SMALL['num_heads'],
    mlp_dim=SMALL['embed_dim'] * SMALL['mlp_ratio'],
    image_size=image_size,
  )
  c.update(kw)
  return ml_collections.ConfigDict(c)


def _images(n=2, size=32, seed=1):
  return np.random.default_rng(seed).normal(size=(n, size, size, 3)).astype(np.float32)


def _timm_outputs(m, x_nhwc):
  with torch.no_grad():
    x = torch.from_numpy(np.transpose(x_nhwc, (0, 3, 1, 2)).copy())
    feats = m.forward_head(m.forward_features(x), pre_logits=True)
    return m.head(feats).numpy(), feats.numpy()


def _ours(config, params, x):
  model = weights.build_model(config)
  logits, feats = model.apply({'params': params}, x, train=False)
  return np.asarray(logits) if logits is not None else None, np.asarray(feats)


@pytest.mark.parametrize('suffix', ['.safetensors', '.pth'])
def test_timm_vit_file_matches_timm_logits_and_features(tmp_path, suffix):
  m = _timm_vit()
  path = str(tmp_path / f'vit{suffix}')
  if suffix == '.safetensors':
    save_file(m.state_dict(), path)
  else:
    torch.save({'state_dict': m.state_dict()}, path)  # the wrapper is unwrapped
  x = _images()
  want_logits, want_feats = _timm_outputs(m, x)
  params = weights.load_checkpoint(path, _config())
  logits, feats = _ours(_config(), params, x)
  np.testing.assert_allclose(feats, want_feats, atol=1e-4, rtol=0)
  np.testing.assert_allclose(logits, want_logits, atol=1e-4, rtol=0)
  # The stacked qkv became (D, heads, head_dim) kernels: query = W_q.T reshaped.
  w = m.state_dict()['blocks.0.attn.qkv.weight'].numpy()[:16]
  q = params['Transformer']['encoderblock_0']['MultiHeadDotProductAttention_1']['query']['kernel']
  np.testing.assert_array_equal(q, w.T.reshape(16, 2, 8))


def test_vit_jax_npz_written_from_a_timm_vit_matches_timm(tmp_path):
  m = _timm_vit()
  state = {k: v.numpy() for k, v in m.state_dict().items()}
  flat = weights.vit_flat_from_timm(state, num_heads=2)
  save_vit_npz(tmp_path / 'vit.npz', tree_lib.unflat(flat))
  x = _images()
  want_logits, want_feats = _timm_outputs(m, x)
  logits, feats = _ours(_config(), weights.load_checkpoint(tmp_path / 'vit.npz', _config()), x)
  np.testing.assert_allclose(feats, want_feats, atol=1e-4, rtol=0)
  np.testing.assert_allclose(logits, want_logits, atol=1e-4, rtol=0)


def test_other_class_count_gets_a_fresh_zero_head_and_features_still_match(tmp_path):
  m = _timm_vit(num_classes=5)
  save_file(m.state_dict(), str(tmp_path / 'vit.safetensors'))
  params = weights.load_checkpoint(tmp_path / 'vit.safetensors', _config(num_classes=7))
  assert params['head']['kernel'].shape == (16, 7) and not params['head']['kernel'].any()
  x = _images()
  _, feats = _ours(_config(num_classes=7), params, x)
  np.testing.assert_allclose(feats, _timm_outputs(m, x)[1], atol=1e-4, rtol=0)


def test_position_embedding_is_resized_for_another_image_size(tmp_path):
  m = _timm_vit()
  save_file(m.state_dict(), str(tmp_path / 'vit.safetensors'))
  params = weights.load_checkpoint(tmp_path / 'vit.safetensors', _config(image_size=48))
  posemb = params['Transformer']['posembed_input']['pos_embedding']
  assert posemb.shape == (1, 1 + 6 * 6, 16)
  np.testing.assert_array_equal(posemb[0, 0], m.pos_embed[0, 0].detach().numpy())  # class token


def test_missing_unexpected_and_misshaped_keys_are_named_together(tmp_path):
  state = _timm_vit().state_dict()
  del state['blocks.1.mlp.fc2.bias']
  state['blocks.0.extra.weight'] = torch.zeros(3)
  state['norm.weight'] = torch.zeros(17)
  save_file(state, str(tmp_path / 'bad.safetensors'))
  with pytest.raises(ValueError) as err:
    weights.load_checkpoint(tmp_path / 'bad.safetensors', _config())
  msg = str(err.value)
  assert str(tmp_path / 'bad.safetensors') in msg
  assert 'missing Transformer/encoderblock_1/MlpBlock_3/Dense_1/bias' in msg
  assert 'unexpected blocks.0.extra.weight' in msg
  assert 'wrong shape Transformer/encoder_norm/scale: file (17,), model (16,)' in msg


def test_truncated_safetensors_is_a_clear_error(tmp_path):
  save_file(_timm_vit().state_dict(), str(tmp_path / 'vit.safetensors'))
  data = open(tmp_path / 'vit.safetensors', 'rb').read()
  (tmp_path / 'cut.safetensors').write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError, match='cannot read .*cut.safetensors as safetensors'):
    weights.load_checkpoint(tmp_path / 'cut.safetensors', _config())


class _Exploit:
  """Unpickling this runs a command: the loaders must refuse it, never run it."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f'touch {self.marker}',))


def test_a_pickle_is_never_executed(tmp_path):
  marker = tmp_path / 'pwned'
  payload = pickle.dumps({'state_dict': {'x': _Exploit(str(marker))}})
  (tmp_path / 'evil.safetensors').write_bytes(payload)  # a pickle where safetensors is expected
  with pytest.raises(ValueError, match='evil.safetensors'):
    weights.load_checkpoint(tmp_path / 'evil.safetensors', _config())
  # The same payload as a torch zip checkpoint: weights_only=True refuses it.
  torch.save({'state_dict': {'x': torch.zeros(1)}}, str(tmp_path / 'evil.pth'))
  with zipfile.ZipFile(tmp_path / 'evil.pth') as z:
    members = {n: z.read(n) for n in z.namelist()}
  pkl = next(n for n in members if n.endswith('data.pkl'))
  members[pkl] = payload
  with zipfile.ZipFile(tmp_path / 'evil.pth', 'w') as z:
    for n, data in members.items():
      z.writestr(n, data)
  with pytest.raises(ValueError, match=r'evil.pth with torch.load\(weights_only=True\)'):
    weights.load_checkpoint(tmp_path / 'evil.pth', _config())
  assert not marker.exists()


def test_unknown_suffix_and_missing_file(tmp_path):
  (tmp_path / 'w.ckpt').write_bytes(b'')
  with pytest.raises(ValueError, match=r'w.ckpt: unknown checkpoint type'):
    weights.load_checkpoint(tmp_path / 'w.ckpt', _config())
  with pytest.raises(FileNotFoundError, match='nope.safetensors'):
    weights.load_checkpoint(tmp_path / 'nope.safetensors', _config())


@pytest.mark.slow
def test_vit_b16_from_timm_matches(tmp_path):
  torch.manual_seed(0)
  m = timm.create_model('vit_base_patch16_224', pretrained=False, num_classes=10).eval()
  with torch.no_grad():
    for p in m.parameters():
      p.add_(0.02 * torch.randn_like(p))
  save_file(m.state_dict(), str(tmp_path / 'b16.safetensors'))
  from gps_jax.models.vit import vit_config

  config = vit_config('B/16', num_classes=10, image_size=224)
  x = _images(n=1, size=224)
  params = weights.load_checkpoint(tmp_path / 'b16.safetensors', config)
  logits, feats = _ours(config, params, x)
  want_logits, want_feats = _timm_outputs(m, x)
  np.testing.assert_allclose(feats, want_feats, atol=1e-4, rtol=0)
  np.testing.assert_allclose(logits, want_logits, atol=1e-4, rtol=0)
