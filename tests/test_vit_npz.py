"""Tests of gps_jax.vit_npz: round trips, head / pre_logits / posemb adaptation, bad files."""

import os
import re
import zipfile

import jax
import numpy as np
import pytest

from gps_jax.models import ViT
from gps_jax.vit_npz import load_vit_npz, resize_posemb, save_vit_npz

try:
  from test_vit import TINY, layout, random_params
except ImportError:  # tests/ imported as a package
  from tests.test_vit import TINY, layout, random_params

POSEMB = 'Transformer/posembed_input/pos_embedding'


def flat(tree, prefix=''):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(flat(v, f'{prefix}{k}/'))
    else:
      out[f'{prefix}{k}'] = v
  return out


@pytest.fixture(scope='module')
def tiny_params():
  return jax.device_get(random_params(ViT(**TINY), seed=3))


@pytest.fixture
def tiny_file(tmp_path, tiny_params):
  path = tmp_path / 'tiny.npz'
  save_vit_npz(path, tiny_params)
  return path


def write_npz(path, arrays):
  np.savez(path, **arrays)
  return path


# ---------------------------------------------------------------- round trips
def test_round_trip(tiny_file, tiny_params):
  assert os.listdir(tiny_file.parent) == ['tiny.npz']  # no temp file left behind
  with np.load(tiny_file) as npz:  # keys are the '/'-joined vit_jax names
    assert {k: npz[k].shape for k in npz.files} == layout(4, 32, 2, 2, 64, 17, 10)
  loaded = flat(load_vit_npz(tiny_file, ViT(**TINY)))
  ref = flat(tiny_params)
  assert loaded.keys() == ref.keys()
  for k, v in ref.items():
    assert isinstance(loaded[k], np.ndarray) and loaded[k].dtype == np.float32
    np.testing.assert_array_equal(loaded[k], v)


def test_load_with_init_params_and_rng(tiny_file, tiny_params):
  a = flat(load_vit_npz(tiny_file, ViT(**TINY), init_params=tiny_params))
  b = flat(load_vit_npz(tiny_file, ViT(**TINY), rng=jax.random.PRNGKey(7)))
  for k, v in flat(tiny_params).items():
    np.testing.assert_array_equal(a[k], v)
    np.testing.assert_array_equal(b[k], v)


def test_other_dtypes_cast_to_float32(tmp_path, tiny_params):
  arrays = {k: np.asarray(v, np.float64) for k, v in flat(tiny_params).items()}
  arrays['cls'] = arrays['cls'].astype(np.float16)
  loaded = flat(load_vit_npz(write_npz(tmp_path / 'f64.npz', arrays), ViT(**TINY)))
  assert all(v.dtype == np.float32 for v in loaded.values())
  np.testing.assert_allclose(loaded['embedding/kernel'], arrays['embedding/kernel'], rtol=1e-6)


def test_other_class_count_reinitialises_head(tiny_file, tiny_params):
  loaded = flat(load_vit_npz(tiny_file, ViT(**{**TINY, 'num_classes': 5})))
  assert loaded['head/kernel'].shape == (32, 5) and loaded['head/bias'].shape == (5,)
  assert not loaded['head/kernel'].any() and not loaded['head/bias'].any()
  for k, v in flat(tiny_params).items():
    if not k.startswith('head/'):
      np.testing.assert_array_equal(loaded[k], v)


def test_headless_model_drops_head(tiny_file):
  loaded = flat(load_vit_npz(tiny_file, ViT(**{**TINY, 'num_classes': 0})))
  assert not any(k.startswith('head/') for k in loaded)
  assert loaded.keys() == layout(4, 32, 2, 2, 64, 17, 0).keys()


def test_headless_file_gets_fresh_head(tmp_path, tiny_params):
  body = {k: v for k, v in tiny_params.items() if k != 'head'}
  path = tmp_path / 'body.npz'
  save_vit_npz(path, body)
  loaded = load_vit_npz(path, ViT(**TINY))
  assert loaded['head']['kernel'].shape == (32, 10) and not loaded['head']['kernel'].any()


def test_pre_logits_dropped(tmp_path):
  params = jax.device_get(random_params(ViT(**TINY, representation_size=24), seed=4))
  path = tmp_path / 'i21k.npz'
  save_vit_npz(path, params)
  loaded = flat(load_vit_npz(path, ViT(**TINY)))
  assert loaded.keys() == layout(4, 32, 2, 2, 64, 17, 10).keys()
  assert not loaded['head/kernel'].any()  # (24, 10) head did not fit (32, 10): fresh
  np.testing.assert_array_equal(loaded['cls'], params['cls'])
  # Kept when the model has the same representation_size.
  same = flat(load_vit_npz(path, ViT(**TINY, representation_size=24)))
  np.testing.assert_array_equal(same['pre_logits/kernel'], params['pre_logits']['kernel'])
  np.testing.assert_array_equal(same['head/kernel'], params['head']['kernel'])


def test_posemb_resized_on_load(tiny_file, tiny_params):
  loaded = load_vit_npz(tiny_file, ViT(**{**TINY, 'image_size': 24}))  # 4x4 -> 6x6 grid
  pe = loaded['Transformer']['posembed_input']['pos_embedding']
  old = tiny_params['Transformer']['posembed_input']['pos_embedding']
  assert pe.shape == (1, 37, 32)
  np.testing.assert_array_equal(pe[:, 0], old[:, 0])
  np.testing.assert_allclose(pe, resize_posemb(old, 37), rtol=1e-6)
  np.testing.assert_array_equal(loaded['cls'], tiny_params['cls'])


# ---------------------------------------------------------------- resize_posemb
def test_resize_identity():
  pe = np.random.default_rng(0).normal(size=(1, 17, 8)).astype(np.float32)
  np.testing.assert_array_equal(resize_posemb(pe, 17), pe)


@pytest.mark.parametrize('new', [5, 10, 50])  # 2x2, 3x3 (down), 7x7 (up) from 4x4
def test_resize_constant_grid_and_class_token(new):
  pe = np.full((1, 17, 3), 2.5, np.float32)
  pe[0, 0] = [-1.0, 7.0, 3.0]
  out = resize_posemb(pe, new)
  assert out.shape == (1, new, 3)
  np.testing.assert_array_equal(out[0, 0], [-1.0, 7.0, 3.0])
  np.testing.assert_allclose(out[0, 1:], 2.5, rtol=1e-6)


def test_resize_linear_ramp_bilinear():
  # 3x3 grid with value 2*row + 3*col + 1, upsampled to 6x6. With half-pixel centres output
  # index i samples source coordinate (i + 0.5) * 3/6 - 0.5 = -0.25, 0.25, 0.75, 1.25, 1.75,
  # 2.25; bilinear interpolation reproduces the ramp at the interior points i = 1..4.
  rows, cols = np.meshgrid(np.arange(3.0), np.arange(3.0), indexing='ij')
  grid = 2 * rows + 3 * cols + 1
  pe = np.concatenate([[[[9.0]]], grid.reshape(1, 9, 1)], axis=1)
  out = resize_posemb(pe, 37)[0, 1:, 0].reshape(6, 6)
  src = np.array([0.25, 0.75, 1.25, 1.75])
  expected = 2 * src[:, None] + 3 * src[None, :] + 1
  np.testing.assert_allclose(out[1:5, 1:5], expected, atol=1e-5)
  # 2x2 -> 4x4 along one axis: [0, 1] -> [_, 0.25, 0.75, _] in every row.
  pe2 = np.array([[[5.0], [0.0], [1.0], [0.0], [1.0]]], np.float32)
  np.testing.assert_allclose(
    resize_posemb(pe2, 17)[0, 1:, 0].reshape(4, 4)[:, 1:3], [[0.25, 0.75]] * 4, atol=1e-6
  )


def test_resize_non_square_is_error():
  with pytest.raises(ValueError, match='square'):
    resize_posemb(np.zeros((1, 7, 4)), 17)  # 6 grid tokens
  with pytest.raises(ValueError, match='square'):
    resize_posemb(np.zeros((1, 17, 4)), 11)  # to 10 grid tokens


# ---------------------------------------------------------------- bad files
def test_missing_unexpected_and_misshaped_in_one_error(tmp_path, tiny_params):
  arrays = flat(tiny_params)
  del arrays['Transformer/encoderblock_1/LayerNorm_2/scale']
  arrays['Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel'] = np.zeros((32, 65))
  arrays['Transformer/extra/kernel'] = np.zeros((3,))
  path = write_npz(tmp_path / 'bad.npz', arrays)
  with pytest.raises(ValueError) as err:
    load_vit_npz(path, ViT(**TINY))
  msg = str(err.value)
  assert str(path) in msg
  assert 'missing Transformer/encoderblock_1/LayerNorm_2/scale' in msg
  assert 'Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel' in msg
  assert '(32, 65)' in msg and '(32, 64)' in msg
  assert 'unexpected Transformer/extra/kernel' in msg


@pytest.mark.parametrize('key', ['cls', 'embedding/bias'])
def test_single_missing_key(tmp_path, tiny_params, key):
  arrays = flat(tiny_params)
  del arrays[key]
  path = write_npz(tmp_path / 'm.npz', arrays)
  with pytest.raises(ValueError, match=f'missing {key}') as err:
    load_vit_npz(path, ViT(**TINY))
  assert str(path) in str(err.value)


def test_posemb_non_square_grid_on_load_is_error(tmp_path, tiny_params):
  arrays = flat(tiny_params)
  arrays[POSEMB] = np.zeros((1, 13, 32), np.float32)  # 12 grid tokens
  path = write_npz(tmp_path / 'ns.npz', arrays)
  with pytest.raises(ValueError, match='square') as err:
    load_vit_npz(path, ViT(**TINY))
  assert str(path) in str(err.value) and POSEMB in str(err.value)


def test_posemb_other_width_is_error(tmp_path, tiny_params):
  arrays = flat(tiny_params)
  arrays[POSEMB] = np.zeros((1, 17, 16), np.float32)
  with pytest.raises(ValueError, match='wrong shape ' + POSEMB):
    load_vit_npz(write_npz(tmp_path / 'w.npz', arrays), ViT(**TINY))


class _Evil:
  """Unpickling this creates the file at self.marker (stands in for arbitrary code)."""

  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return (open, (self.marker, 'w'))


def test_pickled_object_array_is_refused_without_running_code(tmp_path, tiny_params):
  def evil_file(name, marker):
    arrays = dict(flat(tiny_params))
    obj = np.empty(1, dtype=object)
    obj[0] = _Evil(marker)
    arrays['cls'] = obj
    return write_npz(tmp_path / name, arrays)

  # Control: the file really does run code when loaded with pickle allowed.
  control = tmp_path / 'control_marker'
  with np.load(evil_file('control.npz', control), allow_pickle=True) as npz:
    npz['cls']
  assert control.exists()

  marker = tmp_path / 'marker'
  path = evil_file('evil.npz', marker)
  with pytest.raises(ValueError) as err:
    load_vit_npz(path, ViT(**TINY))
  assert str(path) in str(err.value)
  assert not marker.exists()


def test_truncated_file(tiny_file):
  data = tiny_file.read_bytes()
  tiny_file.write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError, match=re.escape(str(tiny_file))):
    load_vit_npz(tiny_file, ViT(**TINY))


def test_corrupted_member(tmp_path, tiny_params):
  path = tmp_path / 'c.npz'
  with zipfile.ZipFile(path, 'w') as z:  # a zip whose member is not an .npy
    z.writestr('cls.npy', b'not an array')
  with pytest.raises(ValueError, match=re.escape(str(path))):
    load_vit_npz(path, ViT(**TINY))


@pytest.mark.parametrize('content', [b'hello, not a zip file\n' * 10, b''])
def test_not_a_zip(tmp_path, content):
  path = tmp_path / 'text.npz'
  path.write_bytes(content)
  with pytest.raises(ValueError, match=re.escape(str(path))):
    load_vit_npz(path, ViT(**TINY))


def test_plain_npy_is_refused(tmp_path):
  path = tmp_path / 'array.npz'
  with open(path, 'wb') as f:
    np.save(f, np.zeros(3))
  with pytest.raises(ValueError, match=re.escape(str(path))):
    load_vit_npz(path, ViT(**TINY))


# ---------------------------------------------------------------- saving
def test_save_is_atomic(tiny_file, tiny_params, monkeypatch):
  before = tiny_file.read_bytes()

  def crash(f, **arrays):
    f.write(b'PK partial')
    raise KeyboardInterrupt('crash while writing')

  monkeypatch.setattr(np, 'savez', crash)
  with pytest.raises(KeyboardInterrupt):
    save_vit_npz(tiny_file, {'cls': np.ones((1, 1, 32))})
  assert tiny_file.read_bytes() == before
  assert os.listdir(tiny_file.parent) == ['tiny.npz']


def test_save_refuses_object_arrays(tmp_path):
  with pytest.raises(ValueError, match='a/b'):
    save_vit_npz(tmp_path / 'o.npz', {'a': {'b': np.array([object()])}})
  assert not os.listdir(tmp_path)
