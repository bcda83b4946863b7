"""Tests of gps_jax.roles against hand-written role tables."""

import jax
import ml_collections
import pytest
from tiny import random_params, tiny_shapes

from gps_jax import methods
from gps_jax import roles as roles_lib
from gps_jax import tree as tree_lib


def expected_gps_table(layers=2):
  """{path: (role, fan_in_ndim)} of the tiny ViT under the GPS rules, written by hand."""
  t = {
    'embedding/kernel': ('select', 3),  # conv (kh, kw, in, out)
    'embedding/bias': ('train', 0),
    'cls': ('freeze', 0),
    'Transformer/posembed_input/pos_embedding': ('freeze', 0),
    'Transformer/encoder_norm/scale': ('freeze', 0),
    'Transformer/encoder_norm/bias': ('freeze', 0),
    'head/kernel': ('train', 0),
    'head/bias': ('train', 0),
  }
  for i in range(layers):
    b = f'Transformer/encoderblock_{i}/'
    for ln in ('LayerNorm_0', 'LayerNorm_2'):
      t[b + ln + '/scale'] = ('freeze', 0)
      t[b + ln + '/bias'] = ('freeze', 0)
    a = b + 'MultiHeadDotProductAttention_1/'
    for qkv in ('query', 'key', 'value'):
      t[a + qkv + '/kernel'] = ('select', 1)  # (in, heads, head_dim)
      t[a + qkv + '/bias'] = ('train', 0)
    t[a + 'out/kernel'] = ('select', 2)  # (heads, head_dim, out)
    t[a + 'out/bias'] = ('train', 0)
    for dense in ('Dense_0', 'Dense_1'):
      t[b + f'MlpBlock_3/{dense}/kernel'] = ('select', 1)
      t[b + f'MlpBlock_3/{dense}/bias'] = ('train', 0)
  return t


# ----------------------------------------------------------------------------
# assign_roles
# ----------------------------------------------------------------------------
def test_assign_roles_gps_table():
  shapes = tiny_shapes()
  roles = roles_lib.assign_roles(shapes)
  flat = tree_lib.flat(roles)
  want = expected_gps_table()
  assert set(flat) == set(want)
  flat_shapes = tree_lib.flat(shapes)
  for path, (role, fan_in_ndim) in want.items():
    r = flat[path]
    assert isinstance(r, roles_lib.LeafRole)
    assert (r.path, r.role, r.fan_in_ndim) == (path, role, fan_in_ndim), path
    assert r.shape == tuple(flat_shapes[path].shape)
  # Derived neuron counts for each kernel kind (fan-in x neurons = size).
  a = 'Transformer/encoderblock_0/MultiHeadDotProductAttention_1/'
  assert (flat[a + 'query/kernel'].fan_in, flat[a + 'query/kernel'].num_neurons) == (16, 16)
  assert (flat[a + 'out/kernel'].fan_in, flat[a + 'out/kernel'].num_neurons) == (16, 16)
  assert (flat['embedding/kernel'].fan_in, flat['embedding/kernel'].num_neurons) == (48, 16)
  d0 = flat['Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel']
  assert (d0.shape, d0.fan_in, d0.num_neurons) == ((16, 32), 16, 32)


def test_assign_roles_works_on_arrays_and_keeps_structure():
  params = tree_lib.unflat(random_params(tiny_shapes()))
  roles = roles_lib.assign_roles(params)
  assert jax.tree.structure(roles) == jax.tree.structure(params)
  got = {p: (r.role, r.fan_in_ndim) for p, r in tree_lib.flat(roles).items()}
  assert got == expected_gps_table()


@pytest.mark.parametrize(
  'rules,match',
  [
    ((('.*', 'tune'),), "unknown role 'tune'"),
    ((('(unclosed', 'train'),), r"rule #0.*bad regex '\(unclosed'"),
    ((('^head/', 'train'), ('[', 'freeze')), r"rule #1.*bad regex '\['"),
    ((('^head/', 'train'),), r"no role rule matches parameter '(?!head/)"),
    ((('embedding/bias$', 'select'), ('.*', 'freeze')), r"'embedding/bias'.*select"),
    ((('.*', 'select'),), r'has role select'),
    ((('.*',),), r'rule #0'),
  ],
)
def test_assign_roles_bad_rules(rules, match):
  with pytest.raises(ValueError, match=match):
    roles_lib.assign_roles(tiny_shapes(), rules)


def test_assign_roles_bad_fan_in_rule():
  shapes = tiny_shapes()
  # A Dense kernel has 2 axes: 2 fan-in axes leave no neuron axis.
  with pytest.raises(ValueError, match='Dense_0/kernel'):
    roles_lib.assign_roles(shapes, fan_in_rules=((r'Dense_0/kernel$', 2), ('.*', -1)))


def test_method_rules():
  shapes = tiny_shapes()
  table = expected_gps_table()
  for method in ('gps', 'random', 'magnitude'):
    flat = tree_lib.flat(roles_lib.assign_roles(shapes, methods.METHODS[method].rules))
    assert {p: (r.role, r.fan_in_ndim) for p, r in flat.items()} == table, method

  def roles_of(method):
    return {
      p: r.role
      for p, r in tree_lib.flat(
        roles_lib.assign_roles(shapes, methods.METHODS[method].rules)
      ).items()
    }

  assert set(roles_of('full').values()) == {'train'}
  linear = roles_of('linear')
  assert {p for p, r in linear.items() if r == 'train'} == {'head/kernel', 'head/bias'}
  assert {p for p, r in linear.items() if r != 'train'} == set(table) - {'head/kernel', 'head/bias'}
  assert set(linear.values()) == {'train', 'freeze'}
  bitfit = roles_of('bitfit')
  want_train = {'head/kernel', 'head/bias', 'embedding/bias'} | {
    p for p in table if p.endswith('/bias') and 'LayerNorm' not in p and 'encoder_norm' not in p
  }
  assert {p for p, r in bitfit.items() if r == 'train'} == want_train
  assert {p for p, r in bitfit.items() if r == 'freeze'} == set(table) - want_train
  assert len(want_train) == 2 + 1 + 2 * 6  # head, embedding, 6 biases per block


def test_gps_rules_freeze_relative_position_tables_and_train_gammas():
  flat = {
    'layers_0/blocks_1/attn/relative_position_bias_table': (49, 4),
    'layers_0/blocks_1/attn/qkv/kernel': (8, 24),
    'stages_0/blocks_0/gamma': (8,),
    'stages_0/blocks_0/conv_dw/kernel': (7, 7, 1, 8),
  }
  shapes = tree_lib.unflat({p: jax.ShapeDtypeStruct(s, 'float32') for p, s in flat.items()})
  got = {
    p: (r.role, r.fan_in_ndim) for p, r in tree_lib.flat(roles_lib.assign_roles(shapes)).items()
  }
  assert got == {
    'layers_0/blocks_1/attn/relative_position_bias_table': ('freeze', 0),
    'layers_0/blocks_1/attn/qkv/kernel': ('select', 1),
    'stages_0/blocks_0/gamma': ('train', 0),
    'stages_0/blocks_0/conv_dw/kernel': ('select', 3),  # depthwise: fan-in 7 * 7 * 1 = 49
  }


def test_method_registry_is_the_one_source_of_methods():
  """Every method is one registry entry: its rules assign roles on the tiny ViT, its score
  source is a registered scorer, and an unknown name is refused naming the known ones."""
  from gps_jax import scoring
  from gps_jax import updates

  shapes = tiny_shapes()
  for name, method in methods.METHODS.items():
    flat = tree_lib.flat(roles_lib.assign_roles(shapes, method.rules))
    has_select = any(r.role == 'select' for r in flat.values())
    # A method selects entries exactly when it names a score source to rank them by.
    assert has_select == (method.score is not None), name
    assert method.score is None or method.score in scoring.SCORERS, name
    assert method.update is None or method.update in updates.RULES, name
  with pytest.raises(ValueError, match="config.method='dora'.*gps, random.*lora, ssf"):
    methods.get('dora')
  cfg = ml_collections.ConfigDict({'method': 'linear', 'rules': (), 'gps': {'score': ''}})
  assert methods.rules(cfg) == methods.LINEAR_RULES and methods.score_source(cfg) is None
  cfg.rules = (('.*', 'freeze'),)
  cfg.gps.score = 'magnitude'
  assert methods.rules(cfg) == (('.*', 'freeze'),) and methods.score_source(cfg) == 'magnitude'
