"""gps_jax.notebook: config files with overrides, live curves, memory, predictions."""

import io
import os

import jax
import numpy as np
import pytest
from PIL import Image

from gps_jax import errors, metrics, notebook, plots, weights
from gps_jax import tree as tree_lib
from gps_jax.backbone import model_config_of
from gps_jax.data import mini_vtab


def test_load_config_takes_the_argument_and_sets_overrides_as_the_command_line(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # a relative path not here is the repository's
  config = notebook.load_config(
    'configs/vtab.py:dtd', {'train.epochs': 3, 'gps.k': 2, 'model.checkpoint': '/x.npz'}
  )
  assert config.data.name == 'dtd' and config.data.batch_size == 16  # the dtd recipe
  assert (config.train.epochs, config.gps.k, config.model.checkpoint) == (3, 2, '/x.npz')
  with pytest.raises(errors.UserError, match=r'train\.epochs'):
    notebook.load_config('configs/vtab.py:dtd', {'train.epoch': 3})
  with pytest.raises(FileNotFoundError, match='configs/nothing.py'):
    notebook.load_config('configs/nothing.py')


def test_live_curves_write_the_log_and_redraw_one_output_in_place(tmp_path, monkeypatch):
  shown = []

  def fake_display(obj, handle=None):
    shown.append((obj, handle))
    return handle or 'handle'

  monkeypatch.setattr(notebook, '_display', fake_display)
  live = notebook.LiveCurves(str(tmp_path), label='gps', every=5)
  for step in range(1, 11):
    live.write('train', step, loss=1.0 / step, accuracy=0.1 * step)
  assert len(shown) == 2  # steps 5 and 10
  live.write('eval', 10, val=0.5)
  live.close()
  assert len(shown) == 4  # the evaluation, and the close
  assert shown[0][1] is None and all(h == 'handle' for _, h in shown[1:])  # one output, updated
  png = Image.open(io.BytesIO(shown[-1][0].data))
  assert png.size == plots.figure_size_px(plots.CURVES_FIGSIZE)
  records = metrics.read(str(tmp_path))
  assert [r['kind'] for r in records] == ['train'] * 10 + ['eval']
  assert live.records[-1] == {'kind': 'eval', 'step': 10, 'val': 0.5}
  assert os.listdir(tmp_path / metrics.TENSORBOARD_DIR)


def test_memory_in_use_counts_bytes(monkeypatch):
  block = np.ones(300 * 2**20, np.uint8)  # 300 MiB, touched
  used = notebook.memory_in_use()
  assert used['max_rss_bytes'] >= block.nbytes
  assert used['max_rss_bytes'] < 1 << 40  # bytes, not kilobytes counted as bytes * 1024
  if jax.default_backend() == 'cpu':  # XLA:CPU keeps no allocator statistics
    assert set(used) == {'max_rss_bytes'}


def test_predict_gives_every_test_example_in_order_without_the_padding():
  config = notebook.load_config('configs/mini_vtab.py:digits8x8,tiny,scratch')
  model = weights.build_model(model_config_of(config, 10))
  params = tree_lib.flat(weights.init_params(model, jax.random.PRNGKey(0)))
  # A head that answers class 3 whatever the image: kernel 0, bias one-hot.
  params['head/kernel'] = np.zeros_like(params['head/kernel'])
  params['head/bias'] = np.eye(10, dtype=np.float32)[3]
  predicted, labels = notebook.predict(config, params)
  _, want = mini_vtab.load_task('digits8x8', 'test')
  assert len(want) % config.data.eval_batch_size  # the last batch is padded
  np.testing.assert_array_equal(labels, want)
  assert (predicted == 3).all()
  assert notebook.accuracy(config, params) == pytest.approx(float((want == 3).mean()))
