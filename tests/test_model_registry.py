"""The table of model families (gps_jax.models.registry) and the one strict fit
(gps_jax.models.fitting.fit_params) that every checkpoint of every family goes through."""

import dataclasses
import pathlib
import re

import jax
import numpy as np
import pytest

from gps_jax import config_defaults, weights
from gps_jax.models import (
  CONVNEXT_VARIANTS,
  IMAGENET_MEAN,
  INCEPTION_MEAN,
  SWIN_VARIANTS,
  VIT_VARIANTS,
  ConvNeXt,
  SwinTransformer,
  ViT,
  convnext_config,
  fitting,
  registry,
  swin_config,
  vit_config,
)
from gps_jax.models.sam import SAM, sam_config
from gps_jax.models.sam import VARIANTS as SAM_VARIANTS
from gps_jax.tree import flat

ROOT = pathlib.Path(__file__).resolve().parent.parent

# family -> (variant, overrides making it small, module class, its config function, variants).
SMALL = {
  'vit': (
    'Ti/16',
    dict(patch_size=8, hidden_size=16, num_layers=1, num_heads=2, mlp_dim=32),
    ViT,
    vit_config,
    VIT_VARIANTS,
  ),
  'swin': (
    'T',
    dict(embed_dim=8, depths=(1, 1), num_heads=(1, 2), window_size=4),
    SwinTransformer,
    swin_config,
    SWIN_VARIANTS,
  ),
  'convnext': (
    'T',
    dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32)),
    ConvNeXt,
    convnext_config,
    CONVNEXT_VARIANTS,
  ),
  'sam': (
    'vit_b',
    dict(patch_size=8, embed_dim=16, depth=2, num_heads=2, global_blocks=(1,), window=2,
         prompt_dim=16, decoder_heads=2, decoder_mlp_dim=32, iou_head_hidden=8),
    SAM,
    sam_config,
    SAM_VARIANTS,
  ),
}  # fmt: skip
# The families whose model ends in a classifier head (SAM's output is a mask).
CLASSIFIERS = [n for n in SMALL if registry.family(n).task == 'classification']


def _small(name, num_classes=3):
  variant, overrides, *_ = SMALL[name]
  return registry.family(name).config(variant, num_classes=num_classes, image_size=32, **overrides)


# ---------------------------------------------------------------- the table


def test_the_table_names_every_family_once():
  assert list(registry.FAMILIES) == ['vit', 'swin', 'convnext', 'sam']
  for name, fam in registry.FAMILIES.items():
    _, _, module, config_fn, variants = SMALL[name]
    assert fam.name == name and fam.config is config_fn and fam.variants is variants
    assert isinstance(fam.build(_small(name)), module)
    assert isinstance(fam.timm, fitting.Layout) and isinstance(fam.npz, fitting.Layout)


@pytest.mark.parametrize('bad', ['foo', 'VIT', ''])
def test_unknown_name_is_one_error_listing_the_known_ones(bad):
  message = f'config.model.name={bad!r}: use one of vit, swin, convnext, sam'
  with pytest.raises(ValueError, match=re.escape(message)):
    registry.family(bad)
  with pytest.raises(ValueError, match=re.escape(message)):
    weights.build_model({'name': bad, 'variant': 'B/16', 'num_classes': 2, 'image_size': 32})
  with pytest.raises(ValueError, match=re.escape(message)):
    weights.load_checkpoint('/nonexistent.npz', {'name': bad})


def test_a_config_without_a_name_is_vit():
  assert registry.family_of({'variant': 'Ti/16'}) is registry.FAMILIES['vit']
  assert registry.family_of(None) is registry.FAMILIES['vit']


@pytest.mark.parametrize('name', list(SMALL))
def test_every_family_builds_and_round_trips_its_config(name):
  fam = registry.family(name)
  cfg = _small(name, num_classes=5)
  assert cfg.name == name and registry.family_of(cfg) is fam
  model = weights.build_model(cfg)
  assert type(model) is SMALL[name][2]
  # Every config key that is a module field reached the module unchanged.
  fields = {f.name for f in dataclasses.fields(model)}
  for key, value in cfg.items():
    if key in fields and key not in ('dtype', 'name'):  # name: Flax's module name
      got = getattr(model, key)
      assert (tuple(got) if isinstance(got, tuple) else got) == (
        tuple(value) if isinstance(value, (list, tuple)) else value
      ), key
  # The config survives a dict round trip and builds the same module.
  assert weights.build_model(cfg.to_dict()) == model
  # Each named variant gives a config of that family.
  for variant in fam.variants:
    assert fam.config(variant, num_classes=0, image_size=224).name == name


@pytest.mark.parametrize('name', CLASSIFIERS)
def test_every_family_inits_its_head_at_zeros(name):
  """fit_params hands a dropped head the model's own init; for every family that is zeros,
  what the Swin and ConvNeXt converters used to write explicitly."""
  model = weights.build_model(_small(name))
  head = fitting.fresh_head(model)
  assert set(head) == {'head/kernel', 'head/bias'}
  for value in head.values():
    assert not np.asarray(value).any()
  init = weights.init_params(model, jax.random.PRNGKey(3))
  assert {k: v.shape for k, v in fitting.fresh_head(model, init).items()} == {
    k: v.shape for k, v in head.items()
  }


@pytest.mark.parametrize('name', list(SMALL))
def test_timm_names_are_one_to_one(name):
  fam = registry.family(name)
  model = weights.build_model(_small(name))
  shapes = fitting.expected_shapes(model)
  names = [fam.timm.file_name(p) for p in shapes]
  assert len(set(names)) == len(names)


def test_paper_backbones():
  vit = config_defaults.backbone_model('vit_b16')
  assert (vit.name, vit.variant, tuple(vit.mean)) == ('vit', 'B/16', INCEPTION_MEAN)
  for key, name, config_fn in (
    ('swin_b', 'swin', swin_config),
    ('convnext_b', 'convnext', convnext_config),
  ):
    m = config_defaults.backbone_model(key)
    want = config_fn('B', num_classes=0, image_size=224)
    want.checkpoint, want.require_checkpoint, want.reinit_head = '', True, True
    assert m.to_dict() == want.to_dict()
    assert tuple(m.mean) == IMAGENET_MEAN
  for key in config_defaults.BACKBONES:
    m = config_defaults.backbone_model(key)
    assert m.image_size == 224 and m.require_checkpoint and m.reinit_head and m.checkpoint == ''
    model_config = {**m.to_dict(), 'num_classes': 10}  # as experiment.py sets it
    assert isinstance(registry.family_of(m).build(model_config), SMALL[m.name][2])
  with pytest.raises(ValueError, match="unknown backbone 'vit_h14'; use one of vit_b16, swin_b"):
    config_defaults.backbone_model('vit_h14')


def test_no_branch_on_family_names_left():
  """The registry is the one place that knows the families: no comparison with a family
  name anywhere else in the package or the tools."""
  pattern = re.compile(
    r"""(==|!=)\s*['"](vit|swin|convnext|sam)['"]|['"](vit|swin|convnext|sam)['"]\s*(==|!=)"""
  )
  hits = [
    f'{path.relative_to(ROOT)}:{i}'
    for path in [*ROOT.joinpath('gps_jax').rglob('*.py'), *ROOT.joinpath('tools').rglob('*.py')]
    for i, line in enumerate(path.read_text().splitlines(), 1)
    if pattern.search(line)
  ]
  assert not hits, hits


# ---------------------------------------------------------------- the one fit

EXPECTED = {
  'body/kernel': (2, 3),
  'body/bias': (3,),
  'norm/scale': (3,),
  'head/kernel': (3, 4),
  'head/bias': (4,),
}


def _arrays(**changes):
  rng = np.random.default_rng(0)
  arrays = {k: rng.normal(size=s).astype(np.float32) for k, s in EXPECTED.items()}
  arrays.update(changes)
  return {k: v for k, v in arrays.items() if v is not None}


def _fresh():
  return {'head/kernel': np.full((3, 4), 7.0), 'head/bias': np.full((4,), 7.0)}


def test_fit_names_all_four_problems_and_the_source_in_one_error():
  loaded = _arrays(
    **{
      'body/bias': None,  # missing
      'extra/weight': np.zeros((5,), np.float32),  # unexpected
      'body/kernel': np.zeros((3, 2), np.float32),  # wrong shape
      'norm/scale': np.arange(3, dtype=np.int32),  # not float
    }
  )
  before = dict(loaded)
  with pytest.raises(ValueError) as err:
    fitting.fit_params(loaded, EXPECTED, 'checkpoint /data/w.npz', fresh_head=_fresh)
  msg = str(err.value)
  assert msg.startswith('checkpoint /data/w.npz does not fit the model (4 problems):')
  for line in (
    'missing body/bias (3,)',
    'unexpected extra/weight (5,)',
    'wrong shape body/kernel: file (3, 2), model (2, 3)',
    'non-float dtype norm/scale int32',
  ):
    assert line in msg, msg
  assert loaded.keys() == before.keys()  # the caller's dict is left alone


def test_fit_keeps_a_fitting_head_and_replaces_any_other():
  loaded = _arrays()
  params = flat(fitting.fit_params(loaded, EXPECTED, 'f', fresh_head=_fresh))
  assert set(params) == set(EXPECTED) and all(v.dtype == np.float32 for v in params.values())
  np.testing.assert_array_equal(params['head/kernel'], loaded['head/kernel'])
  for head in (
    {'head/kernel': np.zeros((3, 9), np.float32)},  # another class count
    {'head/kernel': None},  # half a head
    {'head/kernel': None, 'head/bias': None},  # no head
  ):
    params = flat(fitting.fit_params(_arrays(**head), EXPECTED, 'f', fresh_head=_fresh))
    np.testing.assert_array_equal(params['head/kernel'], np.full((3, 4), 7.0))
    np.testing.assert_array_equal(params['head/bias'], np.full((4,), 7.0))
  # A headless model drops the file's head.
  headless = {k: s for k, s in EXPECTED.items() if not k.startswith('head/')}
  params = flat(fitting.fit_params(_arrays(), headless, 'f', fresh_head=dict))
  assert set(params) == set(headless)


def test_fit_through_a_layout_names_the_file_and_the_flax_path():
  """A renaming layout (timm style): problems name the file's entry and the Flax path,
  buffers are ignored, arrays are transformed, resize hooks run before the comparison."""

  def grow(path, value, want):
    return np.resize(value, want) if path == 'body/bias' else None

  layout = fitting.Layout(
    file_name=lambda p: p.replace('/', '.'),
    file_shape=lambda p, s: s[::-1],
    to_flax=lambda p, a: a.T,
    head_prefix='head.',
    ignore=('.index',),
    resize=(grow,),
  )
  loaded = {k.replace('/', '.'): v.T for k, v in _arrays().items()}
  loaded['body.bias'] = np.ones((2,), np.float32)  # resized by the hook
  loaded['body.index'] = np.arange(4)  # a buffer
  params = flat(fitting.fit_params(loaded, EXPECTED, 'f', fresh_head=_fresh, layout=layout))
  np.testing.assert_array_equal(params['body/kernel'], _arrays()['body/kernel'])
  np.testing.assert_array_equal(params['body/bias'], np.ones(3))
  loaded['norm.scale'] = np.zeros((4,), np.float32)
  with pytest.raises(
    ValueError, match=r'wrong shape norm\.scale: file \(4,\), model \(3,\) \(for norm/scale\)'
  ):
    fitting.fit_params(loaded, EXPECTED, 'f', fresh_head=_fresh, layout=layout)


def test_a_failing_resize_names_the_source_and_entry():
  def refuse(path, value, want):
    raise ValueError('not a square grid')

  layout = fitting.Layout(resize=(refuse,))
  loaded = _arrays(**{'norm/scale': np.zeros((5,), np.float32)})
  with pytest.raises(
    ValueError, match=re.escape('checkpoint x.npz: norm/scale: not a square grid')
  ):
    fitting.fit_params(loaded, EXPECTED, 'checkpoint x.npz', fresh_head=_fresh, layout=layout)


def test_optional_modules_are_dropped_only_when_the_model_lacks_them():
  layout = fitting.Layout(optional=('pre_logits/',))
  loaded = _arrays(**{'pre_logits/kernel': np.zeros((3, 3), np.float32)})
  params = fitting.fit_params(loaded, EXPECTED, 'f', fresh_head=_fresh, layout=layout)
  assert 'pre_logits' not in params
  with_pre = {**EXPECTED, 'pre_logits/kernel': (3, 3)}
  assert 'pre_logits' in fitting.fit_params(loaded, with_pre, 'f', fresh_head=_fresh, layout=layout)


def test_an_npz_takes_the_family_resize_hooks(tmp_path):
  """A gps_jax .npz of any family gets that family's adaptations: here a Swin file written
  at window 4 loads into a window-2 model, its relative position tables resized as timm's
  checkpoint filter would resize them."""
  from gps_jax.models.swin_timm import resize_relative_position_table
  from gps_jax.vit_npz import save_vit_npz

  source = weights.build_model(_small('swin'))
  params = weights.init_params(source, jax.random.PRNGKey(1))
  save_vit_npz(tmp_path / 'swin.npz', params)
  cfg = _small('swin')
  cfg.window_size = 2
  loaded = flat(weights.load_checkpoint(tmp_path / 'swin.npz', cfg))
  key = 'layers_0/blocks_0/attn/relative_position_bias_table'
  np.testing.assert_allclose(
    loaded[key], resize_relative_position_table(flat(params)[key], 2), rtol=0, atol=1e-6
  )
  assert loaded[key].shape == (9, 1)
  for k, v in flat(params).items():
    if not k.endswith('relative_position_bias_table'):
      np.testing.assert_array_equal(loaded[k], v, err_msg=k)
