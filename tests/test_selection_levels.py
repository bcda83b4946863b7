"""The paper's selection ablations (Table 6, Fig. 6): selection level, exclusion, any K and
their config keys; each against NumPy or a hand-written reference."""

import numpy as np
import pytest
from selection_refs import (
  BLOCK0,
  NEURONS,
  count,
  distinct_scores,
  np_masks,
  ref_layer,
  ref_net,
  ref_neuron,
  tiny_selection,
)

from gps_jax import config_check, mask_stats, selection
from gps_jax import roles as roles_lib
from gps_jax import tree as tree_lib
from gps_jax.config_defaults import experiment_config
from gps_jax.errors import UserError


@pytest.fixture(scope='module')
def tiny():
  return tiny_selection()


# ----------------------------------------------------------------------------- levels


@pytest.mark.parametrize('k', [1, 3])
@pytest.mark.parametrize('level', ['neuron', 'layer', 'net'])
def test_levels_select_the_neuron_budget_and_the_top_entries(tiny, level, k):
  _, roles, select = tiny
  scores = distinct_scores(select, seed=k)
  indices, new_roles = selection.select(scores, k, roles, level)
  assert count(indices) == NEURONS * k  # the same entry count at every level
  new = tree_lib.flat(new_roles)
  if level == 'net':
    want = ref_net(scores, NEURONS * k)
  for p, r in select.items():
    if level == 'neuron':
      assert new[p] == r
      np.testing.assert_array_equal(np.asarray(indices[p]), ref_neuron(scores[p], r.fan_in_ndim, k))
      continue
    if level == 'net' and not want[p].size:
      assert p not in indices and new[p].role == 'freeze'
      continue
    # One neuron whose fan-in is the whole tensor; (1, n) positions into the flat tensor.
    assert new[p] == roles_lib.LeafRole(p, 'select', r.shape, len(r.shape))
    got = np.asarray(indices[p])
    assert got.dtype == np.int32 and got.shape[0] == 1
    expect = ref_layer(scores[p], k * r.num_neurons) if level == 'layer' else want[p]
    np.testing.assert_array_equal(got[0], expect, err_msg=p)
  # The dense masks of the selection mark exactly those entries.
  masks = selection.element_masks(indices, new_roles)
  assert sum(int(np.asarray(masks[p]).sum()) for p in select) == NEURONS * k
  want_masks = np_masks(new_roles, indices)
  for p in indices:
    np.testing.assert_array_equal(np.asarray(masks[p]), want_masks[p])


def test_net_level_differs_from_layer_level_and_a_leaf_can_get_nothing(tiny):
  _, roles, select = tiny
  scores = distinct_scores(select, seed=5)
  starved = f'{BLOCK0}MlpBlock_3/Dense_1/kernel'
  scores[starved] = scores[starved] * 1e-3  # far below every other leaf
  boosted = f'{BLOCK0}MlpBlock_3/Dense_0/kernel'
  scores[boosted] = scores[boosted] * 1e3
  indices, new_roles = selection.select(scores, 2, roles, 'net')
  new = tree_lib.flat(new_roles)
  assert starved not in indices and new[starved].role == 'freeze'
  assert indices[boosted].size > 2 * select[boosted].num_neurons  # more than its layer share
  assert count(indices) == 2 * NEURONS
  want = ref_net(scores, 2 * NEURONS)
  assert want[starved].size == 0
  for p in indices:
    np.testing.assert_array_equal(np.asarray(indices[p])[0], want[p])
  # Biases keep their role; the frozen kernel has no trainable entry in the statistics.
  assert new[starved.replace('kernel', 'bias')].role == 'train'
  stats = mask_stats.mask_statistics(new_roles, 2, indices=indices)
  assert stats['leaves'][starved]['trainable'] == 0
  assert stats['selected_entries'] == 2 * NEURONS
  # A resumed run rebuilds the same roles from the indices alone.
  restored = {p: np.asarray(v) for p, v in indices.items()}
  assert selection.roles_after_selection(roles, restored, 'net') == new_roles


def test_mask_statistics_count_the_indices_per_block(tiny):
  _, roles, select = tiny
  scores = distinct_scores(select, seed=7)
  for p in select:
    if p.startswith(BLOCK0):
      scores[p] = scores[p] * 10  # block 0 takes most of the net-level budget
  indices, new_roles = selection.select(scores, 1, roles, 'net')
  stats = mask_stats.mask_statistics(new_roles, 1, indices=indices)
  masks = np_masks(new_roles, indices)
  for block in ('encoderblock_0', 'encoderblock_1', 'embedding', 'head'):
    want = sum(int(m.sum()) for p, m in masks.items() if mask_stats.block_of(p) == block)
    params = sum(m.size for p, m in masks.items() if mask_stats.block_of(p) == block)
    assert stats['blocks'][block]['trainable'] == want, block
    assert stats['blocks'][block]['share_pct'] == pytest.approx(100 * want / params)
  assert stats['blocks']['encoderblock_0']['trainable'] > 112 * 2  # more than its neuron share
  assert stats['trainable'] == sum(int(m.sum()) for m in masks.values())
  # Without the indices a layer/net-level role would count one neuron's K: refused.
  with pytest.raises(ValueError, match='no indices'):
    mask_stats.mask_statistics(new_roles, 1, indices={})


def test_any_k_and_its_limits(tiny):
  _, roles, select = tiny
  scores = distinct_scores(select, seed=1)
  # Fan-in 16 (q, k, v, out): K = 16 is every input of those neurons, 17 too many.
  assert count(selection.select(scores, 16, roles, 'layer')[0]) == 16 * NEURONS
  with pytest.raises(ValueError, match=r'gps\.k=17: .*kernel'):
    selection.select(scores, 17, roles, 'layer')
  with pytest.raises(ValueError, match=r'K=17.*fan-in 16'):
    selection.select(scores, 17, roles, 'neuron')
  # The net level only needs the total: K = 17 fits, since other neurons have more inputs.
  assert count(selection.select(scores, 17, roles, 'net')[0]) == 17 * NEURONS
  total = sum(r.size for r in select.values())
  with pytest.raises(ValueError, match=rf'gps\.k=1000.*{total}'):
    selection.select(scores, 1000, roles, 'net')
  with pytest.raises(ValueError, match='level'):
    selection.select(scores, 1, roles, 'block')


# ----------------------------------------------------------------------------- exclusion


@pytest.mark.parametrize('level', ['neuron', 'layer', 'net'])
def test_exclusion_freezes_exactly_the_matching_leaves(tiny, level):
  _, roles, select = tiny
  scores = distinct_scores(select, seed=3)
  exclude = (r'encoderblock_0/', r'^embedding/')
  matching = [p for p in select if p.startswith((BLOCK0, 'embedding/'))]
  assert len(matching) == 7
  full, _ = selection.select(scores, 2, roles, level)
  indices, new_roles = selection.select(scores, 2, roles, level, exclude)
  new = tree_lib.flat(new_roles)
  for p, r in tree_lib.flat(roles).items():
    if p in matching:
      assert new[p].role == 'freeze' and p not in indices, p
    elif r.role != 'select':
      assert new[p] == r, p  # biases (in the excluded block too), head, norms unchanged
  assert new[f'{BLOCK0}MlpBlock_3/Dense_0/bias'].role == 'train'
  kept = [p for p in select if p not in matching]
  budget = sum(2 * select[p].num_neurons for p in kept)
  assert count(indices) == budget  # the net level's total is that of the kept leaves
  if level == 'net':
    want = ref_net({p: scores[p] for p in kept}, budget)
    for p in kept:
      np.testing.assert_array_equal(np.asarray(indices.get(p, np.zeros((1, 0))))[0], want[p])
  else:  # every other leaf keeps its count and its very entries
    for p in kept:
      np.testing.assert_array_equal(np.asarray(indices[p]), np.asarray(full[p]), err_msg=p)
  assert selection.excluded_leaves(roles, exclude) == matching
  info = selection.selection_summary(roles, new_roles, indices, level, exclude)
  assert info['excluded'] == matching and info['entries'] == budget
  # Excluded leaves need no scores; a regex that finds nothing is a mistake.
  selection.select({p: scores[p] for p in kept}, 2, roles, level, exclude)
  with pytest.raises(ValueError, match=r'gps\.exclude\[0\].*matches no'):
    selection.select(scores, 2, roles, level, (r'encoderblock_9/',))


# ----------------------------------------------------------------------------- config


def test_config_check_names_the_selection_keys():
  def check(**gps):
    c = experiment_config()
    c.gps.update(gps)
    config_check.validate(c)

  check(level='net', score='head_ce', exclude=(r'encoderblock_(0|1)/',))
  for gps, match in [
    ({'level': 'block'}, r"^config\.gps\.level='block': use one of neuron, layer, net$"),
    ({'score': 'ce'}, r"^config\.gps\.score='ce': use one of .*head_ce"),
    ({'exclude': ('ok', '(unclosed')}, r"^config\.gps\.exclude\[1\]='\(unclosed': not a regular"),
  ]:
    with pytest.raises(UserError, match=match):
      check(**gps)
