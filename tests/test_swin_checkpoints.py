"""Reading timm SwinTransformer state dicts into the Flax Swin (swin_params_from_timm): a
classifier head of another class count (or none) dropped or started fresh, relative position
tables resized to another window size as timm resizes them (alone and through timm's own
checkpoint filter), and the one error that names every bad key. The model's own parity with
timm is the job of tests/test_swin.py.
"""

import numpy as np
import pytest

torch = pytest.importorskip('torch')
pytest.importorskip('safetensors')
pytest.importorskip('timm')

from timm.layers import resize_rel_pos_bias_table  # noqa: E402
from timm.models import swin_transformer as timm_swin  # noqa: E402
from timm_refs import (  # noqa: E402
  SWIN_SMALL as SMALL,
  TOL,
  flax_outputs,
  max_diff,
  swin_flax_model as flax_model,
  swin_images as images,
  swin_timm_model as timm_model,
  through_safetensors,
  timm_outputs,
)

from gps_jax.models.swin_timm import (  # noqa: E402
  resize_relative_position_table,
  swin_params_from_timm,
)


def test_num_classes_zero(tmp_path):
  ref = timm_model(SMALL, num_classes=0)
  state = through_safetensors(ref, tmp_path)
  assert not any(k.startswith('head') for k in state)
  model = flax_model(SMALL, num_classes=0)
  params = swin_params_from_timm(state, model)
  assert 'head' not in params
  x = images(2, 32)
  logits, feats = flax_outputs(model, params, x)
  assert logits is None
  with torch.no_grad():
    assert max_diff(feats, ref(x).numpy()) <= TOL  # timm returns the pooled features
  # A checkpoint with a head loads into a headless model too, the head dropped.
  headed = timm_model(SMALL, num_classes=10)
  params = swin_params_from_timm(through_safetensors(headed, tmp_path, 'h.safetensors'), model)
  assert 'head' not in params
  _, feats = flax_outputs(model, params, x)
  assert max_diff(feats, timm_outputs(headed, x)[1]) <= TOL


def test_head_of_other_class_count_is_dropped(tmp_path):
  ref = timm_model(SMALL, num_classes=10)
  state = through_safetensors(ref, tmp_path)
  model = flax_model(SMALL, num_classes=7)
  params = swin_params_from_timm(state, model)
  assert params['head']['kernel'].shape == (32, 7) and params['head']['bias'].shape == (7,)
  assert not np.any(params['head']['kernel']) and not np.any(params['head']['bias'])
  x = images(2, 32)
  logits, feats = flax_outputs(model, params, x)
  assert not np.any(np.asarray(logits))
  assert max_diff(feats, timm_outputs(ref, x)[1]) <= TOL
  # A headless checkpoint gives a headed model its fresh zero head as well.
  headless = {k: v for k, v in state.items() if not k.startswith('head.')}
  params = swin_params_from_timm(headless, flax_model(SMALL, num_classes=10))
  assert not np.any(params['head']['kernel']) and params['head']['bias'].shape == (10,)


@pytest.mark.parametrize('new_window', [2, 3, 6, 7])
def test_resize_table_matches_timm(new_window):
  table = np.random.default_rng(0).normal(size=(49, 3)).astype(np.float32)  # window 4
  ours = resize_relative_position_table(table, new_window)
  size = (2 * new_window - 1) ** 2
  theirs = resize_rel_pos_bias_table(
    torch.from_numpy(table), new_window_size=(new_window, new_window), new_bias_shape=(size, 3)
  ).numpy()
  assert ours.shape == theirs.shape == (size, 3) and ours.dtype == np.float32
  assert max_diff(ours, theirs) <= 1e-5
  np.testing.assert_array_equal(resize_relative_position_table(table, 4), table)


@pytest.mark.parametrize('new_window', [2, 6])
def test_resized_checkpoint_matches_timm(new_window, tmp_path):
  """A window-4 checkpoint loaded into a window-`new_window` model, against timm's own
  loading path (checkpoint_filter_fn resizes the tables, then a strict load_state_dict)."""
  src = timm_model(SMALL)
  state = through_safetensors(src, tmp_path)
  cfg = dict(SMALL, window_size=new_window)
  ref = timm_model(cfg, seed=5)
  filtered = timm_swin.checkpoint_filter_fn({k: torch.from_numpy(v) for k, v in state.items()}, ref)
  ref.load_state_dict(filtered, strict=True)
  model = flax_model(cfg)
  params = swin_params_from_timm(state, model)
  table = params['layers_0']['blocks_1']['attn']['relative_position_bias_table']
  assert table.shape == ((2 * new_window - 1) ** 2, 2)
  x = images(2, 32)
  logits, feats = flax_outputs(model, params, x)
  ref_logits, ref_feats = timm_outputs(ref, x)
  assert max_diff(logits, ref_logits) <= TOL
  assert max_diff(feats, ref_feats) <= TOL


def test_errors_name_every_bad_key(tmp_path):
  state = through_safetensors(timm_model(SMALL), tmp_path)
  del state['layers.0.blocks.1.attn.qkv.weight']
  state['layers.0.blocks.1.attn.extra.weight'] = np.zeros((3, 3), np.float32)
  state['layers.1.downsample.reduction.weight'] = np.zeros((32, 60), np.float32)
  state['layers.1.blocks.0.attn.relative_position_bias_table'] = np.zeros((49, 3), np.float32)
  state['norm.bias'] = np.zeros((31,), np.float32)
  with pytest.raises(ValueError) as err:
    swin_params_from_timm(state, flax_model(SMALL))
  msg = str(err.value)
  assert '5 problems' in msg
  for name in (
    'missing layers.0.blocks.1.attn.qkv.weight',
    'unexpected layers.0.blocks.1.attn.extra.weight',
    'wrong shape layers.1.downsample.reduction.weight',
    'wrong shape layers.1.blocks.0.attn.relative_position_bias_table',
    'wrong shape norm.bias',
  ):
    assert name in msg
