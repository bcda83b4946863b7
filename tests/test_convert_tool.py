"""tools/convert_checkpoint.py: a timm file in, a gps_jax-layout .npz out, counts printed."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip('torch')
timm = pytest.importorskip('timm')
from safetensors.torch import save_file  # noqa: E402

from gps_jax import weights  # noqa: E402
from gps_jax.models import vit_config  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), '..')


@pytest.mark.slow
def test_convert_timm_vit_ti16_to_npz_and_back(tmp_path):
  torch.manual_seed(0)
  m = timm.create_model('vit_tiny_patch16_224', pretrained=False, num_classes=7).eval()
  with torch.no_grad():
    for p in m.parameters():
      p.add_(0.05 * torch.randn_like(p))
  save_file(m.state_dict(), str(tmp_path / 'ti.safetensors'))
  out = subprocess.run(
    [sys.executable, os.path.join(ROOT, 'tools', 'convert_checkpoint.py'), '--model=vit',
     '--variant=Ti/16', str(tmp_path / 'ti.safetensors'), str(tmp_path / 'ti.npz')],
    capture_output=True, text=True, check=True, cwd=ROOT,
  )  # fmt: skip
  lines = dict(
    (m_.group(1), int(m_.group(2).replace(',', '')))
    for m_ in re.finditer(r'^(\S+)\s+([\d,]+)$', out.stdout, re.M)
  )
  backbone = sum(p.numel() for n, p in m.named_parameters() if not n.startswith('head.'))
  assert lines['total'] == backbone  # --num_classes=0: the 7-class head is dropped
  assert sum(v for k, v in lines.items() if k != 'total') == backbone
  assert lines['encoderblock_0'] == sum(
    p.numel() for n, p in m.named_parameters() if n.startswith('blocks.0.')
  )
  # The .npz loads back for the same model and gives timm's features.
  cfg = vit_config('Ti/16', num_classes=0, image_size=224)
  params = weights.load_checkpoint(tmp_path / 'ti.npz', cfg)
  x = np.random.default_rng(0).normal(size=(1, 224, 224, 3)).astype(np.float32)
  _, feats = weights.build_model(cfg).apply({'params': params}, x, train=False)
  with torch.no_grad():
    want = m.forward_head(m.forward_features(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())),
                          pre_logits=True)  # fmt: skip
  np.testing.assert_allclose(np.asarray(feats), want.numpy(), atol=1e-4, rtol=0)
