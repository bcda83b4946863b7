"""Progress bars (gps_jax.progress) on the selection pass, training and evaluation: drawn
with images/s and the time remaining when asked or on a terminal, silent otherwise."""

import io

import jax
import numpy as np
import pytest

from gps_jax import progress
from gps_jax import roles as roles_lib
from gps_jax import scoring
from gps_jax import tree as tree_lib
from gps_jax.config_defaults import experiment_config
from gps_jax.models import ViT
from gps_jax.trainer import MaskedFinetuner, fit

from tiny import TINY, random_params, tiny_shapes, two_view_batches


class _Terminal(io.StringIO):
  def isatty(self):
    return True


@pytest.mark.parametrize(
  'env, tty, want',
  [('1', False, True), ('0', True, False), (None, True, True), (None, False, False)],
)
def test_enabled(monkeypatch, env, tty, want):
  if env is None:
    monkeypatch.delenv(progress.ENV, raising=False)
  else:
    monkeypatch.setenv(progress.ENV, env)
  monkeypatch.setattr('sys.stderr', _Terminal() if tty else io.StringIO())
  assert progress.enabled() is want


def _selection_pass(total=0):
  model = ViT(**TINY)
  flat = random_params(tiny_shapes())
  roles = roles_lib.assign_roles(tree_lib.unflat(flat))
  batches = two_view_batches(2, 4, seed=0)
  return scoring.accumulate_scores(
    model.apply, flat, roles, batches, jax.random.PRNGKey(0), total=total
  )


def test_selection_pass_bar_counts_images_with_rate_and_time_left(monkeypatch, capsys):
  monkeypatch.setenv(progress.ENV, '1')
  _selection_pass(total=8)
  err = capsys.readouterr().err
  # 2 batches of 4 images (8 views each) out of 8: the bar's last state, its rate and ETA.
  assert 'selection pass' in err and '8/8' in err and 'img/s' in err and '<00:00' in err


def test_no_bar_when_not_a_terminal(monkeypatch, capsys):
  monkeypatch.delenv(progress.ENV, raising=False)
  _selection_pass(total=8)
  assert capsys.readouterr().err == ''  # pytest's captured stderr is not a terminal


def test_training_and_evaluation_bars(monkeypatch, capsys):
  monkeypatch.setenv(progress.ENV, '1')
  shapes = tiny_shapes()
  roles = roles_lib.assign_roles(shapes)
  rng = np.random.default_rng(0)
  indices = {
    p: np.tile(np.arange(2, dtype=np.int32), (r.num_neurons, 1))
    for p, r in roles_lib.leaves_with_role(roles, 'select').items()
  }
  batches = [
    {
      'image': rng.normal(size=(4, 8, 8, 3)).astype(np.float32),
      'label': rng.integers(0, 5, size=4).astype(np.int32),
    }
    for _ in range(3)
  ]
  tuner = MaskedFinetuner(
    ViT(**TINY).apply, roles, indices, experiment_config(), num_classes=5, total_steps=3
  )
  evals = {'val': lambda: [{**b, 'mask': np.ones(4, bool)} for b in batches[:2]]}
  fit(tuner, random_params(shapes), iter(batches), 3, jax.random.PRNGKey(0), final_sets=evals)
  err = capsys.readouterr().err
  assert 'training' in err and '12/12' in err  # 3 steps of 4 images, total known
  assert 'evaluation: 8img' in err  # 2 batches of 4, total unknown
