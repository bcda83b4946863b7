"""Reading timm ConvNeXt state dicts into the Flax ConvNeXt (convnext_params_from_timm): how
arrays are laid out after conversion, how a classifier head of another class count (or none) is
dropped or started fresh, and the one error that names every missing, unexpected or misshapen
key. The model's own parity with timm is the job of tests/test_convnext.py.
"""

import numpy as np
import pytest

pytest.importorskip('torch')
pytest.importorskip('safetensors')
pytest.importorskip('timm')

from timm_refs import (  # noqa: E402
  CONVNEXT_SMALL as SMALL,
  CONVNEXT_SMALL_IMAGE as SMALL_IMAGE,
  TOL,
  convnext_images as images,
  convnext_small,
  convnext_timm_model as timm_model,
  flax_outputs,
  max_diff,
  through_safetensors as via_safetensors,
  timm_outputs,
)

from gps_jax import tree as tree_lib  # noqa: E402
from gps_jax.models.convnext import ConvNeXt  # noqa: E402
from gps_jax.models.convnext_timm import convnext_params_from_timm  # noqa: E402


@pytest.fixture(scope='module')
def small(tmp_path_factory):
  """A small timm ConvNeXt with 10 classes, its safetensors state dict and a Flax twin."""
  return convnext_small(tmp_path_factory.mktemp('convnext'))


# --- classifier heads -----------------------------------------------------------------------


def test_num_classes_zero_features_only(tmp_path, small):
  tmodel = timm_model(SMALL['depths'], SMALL['dims'], num_classes=0, seed=1)
  sd = via_safetensors(tmodel, tmp_path / 'headless.safetensors')
  assert not any(k.startswith('head.fc.') for k in sd)
  model = ConvNeXt(num_classes=0, image_size=SMALL_IMAGE, **SMALL)
  params = convnext_params_from_timm(sd, model)
  assert 'head' not in params
  x = images(2, SMALL_IMAGE, seed=2)
  logits, feats = flax_outputs(model, params, x)
  assert logits is None
  assert max_diff(feats, timm_outputs(tmodel, x)[1]) <= TOL

  # A checkpoint with a classifier loads into a features-only model: its head is dropped.
  tmodel10, sd10, _, _ = small
  params = convnext_params_from_timm(sd10, model)
  assert 'head' not in params
  assert max_diff(flax_outputs(model, params, x)[1], timm_outputs(tmodel10, x)[1]) <= TOL

  # A headless checkpoint in a classifier: the model keeps a fresh zero head.
  model5 = ConvNeXt(num_classes=5, image_size=SMALL_IMAGE, **SMALL)
  params = convnext_params_from_timm(sd, model5)
  np.testing.assert_array_equal(params['head']['kernel'], np.zeros((32, 5), np.float32))
  np.testing.assert_array_equal(params['head']['bias'], np.zeros((5,), np.float32))


def test_head_of_other_class_count_is_dropped(small):
  tmodel, sd, _, params10 = small
  model = ConvNeXt(num_classes=5, image_size=SMALL_IMAGE, **SMALL)
  params = convnext_params_from_timm(sd, model)
  np.testing.assert_array_equal(params['head']['kernel'], np.zeros((32, 5), np.float32))
  np.testing.assert_array_equal(params['head']['bias'], np.zeros((5,), np.float32))
  ours, theirs = tree_lib.flat(params), tree_lib.flat(params10)
  assert set(ours) == set(theirs)
  for k in ours:
    if not k.startswith('head/'):
      np.testing.assert_array_equal(ours[k], theirs[k])
  x = images(2, SMALL_IMAGE, seed=3)
  logits, feats = flax_outputs(model, params, x)
  np.testing.assert_array_equal(logits, np.zeros((2, 5), np.float32))
  assert max_diff(feats, timm_outputs(tmodel, x)[1]) <= TOL


# --- converted arrays -----------------------------------------------------------------------


def test_converted_arrays(small):
  _, sd, _, params = small
  flat = tree_lib.flat(params)
  assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in flat.values())
  np.testing.assert_array_equal(
    flat['stages_1/blocks_0/conv_dw/kernel'][:, :, 0, 5],
    sd['stages.1.blocks.0.conv_dw.weight'][5, 0],
  )
  np.testing.assert_array_equal(
    flat['stages_2/blocks_1/mlp/fc1/kernel'], sd['stages.2.blocks.1.mlp.fc1.weight'].T
  )
  np.testing.assert_array_equal(flat['final_norm/scale'], sd['head.norm.weight'])
  np.testing.assert_array_equal(flat['stages_3/blocks_0/gamma'], sd['stages.3.blocks.0.gamma'])


# --- checkpoint errors ----------------------------------------------------------------------


def test_all_problems_in_one_error(small):
  _, sd, model, _ = small
  bad = dict(sd)
  del bad['stages.2.blocks.1.mlp.fc2.bias']
  del bad['head.norm.weight']  # the final norm is not the classifier: never dropped
  bad['stages.0.blocks.0.extra.weight'] = np.zeros((3,), np.float32)
  bad['stages.1.blocks.0.mlp.fc1.weight'] = sd['stages.1.blocks.0.mlp.fc1.weight'].T
  bad['stem.0.weight'] = sd['stem.0.weight'][:, :, :2]
  bad['stages.3.blocks.0.gamma'] = np.ones((32,), np.int32)
  with pytest.raises(ValueError) as info:
    convnext_params_from_timm(bad, model)
  message = str(info.value)
  assert '6 problems' in message
  for name in (
    'missing stages.2.blocks.1.mlp.fc2.bias',
    'missing head.norm.weight',
    'unexpected stages.0.blocks.0.extra.weight',
    'wrong shape stages.1.blocks.0.mlp.fc1.weight',
    'wrong shape stem.0.weight',
    'non-float dtype stages.3.blocks.0.gamma',
  ):
    assert name in message, message
  assert 'stages_1/blocks_0/mlp/fc1/kernel' in message  # the Flax path is named too
  assert 'stages.2.blocks.1.mlp.fc2.bias' in sd  # the caller's dict is left alone


def test_state_dict_of_another_architecture(small):
  _, sd, _, _ = small
  deeper = ConvNeXt(num_classes=10, image_size=SMALL_IMAGE, depths=(1, 1, 3, 1), dims=SMALL['dims'])
  with pytest.raises(ValueError, match=r'missing stages\.2\.blocks\.2\.conv_dw\.weight'):
    convnext_params_from_timm(sd, deeper)
  shallower = ConvNeXt(
    num_classes=10, image_size=SMALL_IMAGE, depths=(1, 1, 1, 1), dims=SMALL['dims']
  )
  with pytest.raises(ValueError, match=r'unexpected stages\.2\.blocks\.1\.gamma'):
    convnext_params_from_timm(sd, shallower)
