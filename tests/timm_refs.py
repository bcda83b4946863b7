"""timm's PyTorch ConvNeXt and SwinTransformer as the references of the ConvNeXt and Swin tests
(tests/test_convnext*.py, tests/test_swin*.py; tests/ is on sys.path under pytest; no tests here).

A timm model gets random, non-trivial values in every parameter (zero or unit inits would hide
bugs), its state dict goes through a ``.safetensors`` file like a downloaded checkpoint, is
converted, and the Flax model must give the same logits and pre-logits features to ``TOL`` in
float32. Helpers named after a family (``convnext_*``, ``swin_*``, ``CONVNEXT_*``, ``SWIN_*``)
are that family's; the others serve both.
"""

import functools
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import torch
from safetensors import numpy as safetensors_numpy
from safetensors import torch as safetensors_torch
from timm.models import convnext as timm_convnext
from timm.models import swin_transformer as timm_swin

from gps_jax.models.convnext import ConvNeXt
from gps_jax.models.convnext_timm import convnext_params_from_timm
from gps_jax.models.swin import SwinTransformer
from gps_jax.tree import flat

TOL = 1e-4

# --- both families --------------------------------------------------------------------------


def through_safetensors(module, path, name='model.safetensors'):
  """state_dict() plus every buffer (Swin's relative_position_index and attn_mask are
  non-persistent in timm 1.0) -> .safetensors -> NumPy. ``path`` is the file (ending in
  .safetensors) or the folder to write ``name`` in. Tensors are cloned: safetensors refuses
  shared ones."""
  path = pathlib.Path(path)
  path = path if path.suffix == '.safetensors' else path / name
  tensors = dict(module.state_dict())
  tensors.update({k: b for k, b in module.named_buffers() if b is not None})
  tensors = {k: v.detach().clone().contiguous() for k, v in tensors.items()}
  safetensors_torch.save_file(tensors, str(path))
  return safetensors_numpy.load_file(str(path))


def as_nchw(x):
  """Torch NCHW images as they are; NumPy NHWC ones as a torch NCHW tensor."""
  if isinstance(x, torch.Tensor):
    return x
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def timm_outputs(module, x):
  """(logits or None, pre-logits features) as NumPy of a timm model on torch NCHW or NumPy
  NHWC images."""
  with torch.no_grad():
    feats = module.forward_features(as_nchw(x))
    pre = module.forward_head(feats, pre_logits=True).numpy()
    logits = module.forward_head(feats).numpy() if module.num_classes else None
  return logits, pre


@functools.lru_cache(maxsize=None)
def jitted_apply(model, train=False):
  """One compiled apply per (model, train); eager JAX would compile every op separately."""
  return jax.jit(functools.partial(model.apply, train=train))


def flax_outputs(model, params, x):
  """(logits or None, features) as NumPy of ``model`` in eval mode on torch NCHW or NHWC
  images."""
  nhwc = x.numpy().transpose(0, 2, 3, 1) if isinstance(x, torch.Tensor) else x
  # 'highest': full float32 convolutions and matmuls also on accelerators (no TF32/bf16 passes).
  with jax.default_matmul_precision('highest'):
    logits, feats = jitted_apply(model)({'params': params}, jnp.asarray(nhwc))
  return (None if logits is None else np.asarray(logits)), np.asarray(feats)


def max_diff(a, b):
  assert a.shape == b.shape, (a.shape, b.shape)
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def shapes(tree):
  return {k: tuple(v.shape) for k, v in flat(tree).items()}


def init_shapes_tree(model):
  """The model's params as jax.ShapeDtypeStructs (model.init itself is slow on CPU)."""
  x = jnp.zeros((1, model.image_size, model.image_size, 3))
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False)['params'])


def init_shapes(model):
  return shapes(init_shapes_tree(model))


# --- ConvNeXt -------------------------------------------------------------------------------

CONVNEXT_SMALL = dict(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32))
CONVNEXT_SMALL_IMAGE = 64


def randomize_convnext(model, seed):
  """Gives every parameter of a timm ConvNeXt a random, non-trivial value (in place): weights
  ~ N(0, 1/fan_in), biases ~ N(0, 0.1^2), norm scales and layer-scale gammas ~ U(0.5, 1.5)."""
  torch.manual_seed(seed)
  done = set()
  with torch.no_grad():
    for name, module in model.named_modules():
      prefix = f'{name}.' if name else ''
      if isinstance(module, torch.nn.LayerNorm):
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0.0, 0.1)
      elif isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
        fan_in = math.prod(module.weight.shape[1:])
        module.weight.normal_(0.0, 1.0 / math.sqrt(fan_in))
        module.bias.normal_(0.0, 0.1)
      else:
        continue
      done.update({prefix + 'weight', prefix + 'bias'})
    for name, p in model.named_parameters():
      if name.endswith('gamma'):
        p.uniform_(0.5, 1.5)
        done.add(name)
  assert done == {n for n, _ in model.named_parameters()}  # nothing left at its init
  return model


def convnext_timm_model(depths, dims, num_classes, seed=0, **kwargs):
  model = timm_convnext.ConvNeXt(depths=depths, dims=dims, num_classes=num_classes, **kwargs)
  return randomize_convnext(model, seed).eval()


def convnext_images(batch, size, seed=0):
  """NumPy NHWC images."""
  return np.random.RandomState(seed).randn(batch, size, size, 3).astype(np.float32)


def convnext_small(folder):
  """(timm model, its safetensors state dict in ``folder``, Flax twin, converted params) of a
  small ConvNeXt with 10 classes: the tests' ``small`` fixture."""
  tmodel = convnext_timm_model(CONVNEXT_SMALL['depths'], CONVNEXT_SMALL['dims'], num_classes=10)
  sd = through_safetensors(tmodel, folder / 'small.safetensors')
  model = ConvNeXt(num_classes=10, image_size=CONVNEXT_SMALL_IMAGE, **CONVNEXT_SMALL)
  return tmodel, sd, model, convnext_params_from_timm(sd, model)


# --- Swin -----------------------------------------------------------------------------------

# Small: shifted windows in stage 0 (resolution 8 > window 4), none in stage 1 (4 <= 4).
SWIN_SMALL = dict(
  image_size=32, patch_size=4, embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=4
)
# Padded: resolutions 10 -> 5 -> 3 with window 4: padding to 12 and 8 in the shifted blocks,
# an odd resolution for PatchMerging and a window clamped to 3 (5x5 table) in stage 2.
SWIN_PADDED = dict(
  image_size=40, patch_size=4, embed_dim=16, depths=(2, 2, 2), num_heads=(2, 4, 8), window_size=4
)


def randomize_swin(module, seed):
  """Random values (in place) for every parameter of a timm SwinTransformer: relative position
  tables ~ N(0, 0.5^2), LayerNorm scales ~ N(1, 0.2^2), biases ~ N(0, 0.1^2), weights of
  unit-variance outputs."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      r = torch.randn(p.shape, generator=gen)
      if 'relative_position_bias_table' in name:
        p.copy_(0.5 * r)
      elif p.ndim == 1 and name.endswith('weight'):  # LayerNorm scales
        p.copy_(1.0 + 0.2 * r)
      elif p.ndim == 1:  # biases
        p.copy_(0.1 * r)
      else:  # Linear (out, in) / conv (out, in, kh, kw): unit-variance outputs
        p.copy_(r / math.sqrt(p[0].numel()))


def swin_timm_model(cfg, num_classes=10, seed=0, drop_path_rate=0.3, **kw):
  """A timm SwinTransformer of ``cfg`` in eval mode with every parameter random (drop-path
  is set, as in swin_flax_model, to check that evaluation ignores it)."""
  m = timm_swin.SwinTransformer(
    img_size=cfg['image_size'],
    patch_size=cfg['patch_size'],
    embed_dim=cfg['embed_dim'],
    depths=cfg['depths'],
    num_heads=cfg['num_heads'],
    window_size=cfg['window_size'],
    num_classes=num_classes,
    drop_path_rate=drop_path_rate,
    **kw,
  )
  randomize_swin(m, seed)
  return m.eval()


def swin_flax_model(cfg, num_classes=10, drop_path_rate=0.3, **kw):
  return SwinTransformer(
    drop_path_rate=drop_path_rate,
    num_classes=num_classes,
    image_size=cfg['image_size'],
    patch_size=cfg['patch_size'],
    embed_dim=cfg['embed_dim'],
    depths=cfg['depths'],
    num_heads=cfg['num_heads'],
    window_size=cfg['window_size'],
    **kw,
  )


def swin_images(batch, size, seed=1):
  """Torch NCHW images."""
  return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
