"""configs/polyp.py: the paper's SAM recipe as data, and a run of the whole path (official
.pth checkpoint -> task-loss selection -> sparse fine-tuning -> mDice / mIoU -> delta) on a
generated Kvasir-SEG folder with a tiny SAM."""

import importlib.util
import json
import os

import numpy as np
import pytest
import torch
from cli_run import REPO
from sam_refs import MICRO, torch_sam

from gps_jax import config_check, experiment, methods, notebook, seg_figures, seg_metrics, sweep
from gps_jax import delta as delta_lib
from gps_jax.data import kvasir, splits
from gps_jax.errors import UserError
from gps_jax.models import sam_torch
from gps_jax.models.sam import SAM
from gps_jax.sweep import method_config




def _module(relative: str):
  spec = importlib.util.spec_from_file_location(relative.replace('/', '_')[:-3], os.path.join(REPO, relative))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _load_polyp(arg=None):
  module = _module('configs/polyp.py')
  return module, module.get_config(arg)


def test_the_paper_recipe(tmp_path):
  _, c = _load_polyp()
  assert (c.model.name, c.model.variant, c.model.image_size) == ('sam', 'vit_b', 1024)
  assert c.model.require_checkpoint and tuple(c.model.mean) == (0.485, 0.456, 0.406)
  assert (c.data.source, c.data.batch_size, c.data.recipe) == ('kvasir', 1, 'resize')
  assert (c.optim.name, c.optim.lr, c.optim.weight_decay, c.optim.end_lr) == ('adamw', 2e-4, 0.01, 1e-7)
  assert (c.optim.schedule, c.optim.warmup_epochs, c.train.epochs) == ('timm_epoch_cosine', 0.0, 20)
  assert c.gps.k == 1 and methods.score_source(c) == 'task_loss'
  for method in ('gps', 'full', 'linear', 'bitfit', 'lora', 'ssf', 'adapter'):
    methods.rules(method_config(c, method))  # defined for SAM
  # It validates as it is once the two paths are given; without the folder, one error.
  pth = tmp_path / 'sam_vit_b_01ec64.pth'
  pth.write_bytes(b'')
  c.model.checkpoint = str(pth)
  config_check.validate(c)
  c.data.recipe = 'fgvc'
  with pytest.raises(UserError, match="config.data.recipe='fgvc': a segmentation set"):
    config_check.validate(c)
  _, compare = _load_polyp('synthetic,compare')
  assert compare.compare_methods == ('gps', 'full', 'linear', 'bitfit', 'lora', 'ssf', 'adapter')


def test_without_the_data_folder_the_error_names_the_key():
  _, c = _load_polyp()
  with pytest.raises(UserError, match=r'^config\.data\.data_dir must name the Kvasir-SEG folder'):
    splits.open_split(c.data, 'train')


def test_the_comparison_table_shows_every_test_metric():
  row = dict(trainable_without_head=10, share_without_head_pct=1.0, selection_seconds=1.0,
             train_seconds=2.0, metric='dice', seed=0)  # fmt: skip
  rows = [
    {**row, 'method': 'gps', 'test_dice': 0.5, 'test_iou': 0.25, 'best_val_dice': 0.4},
    {**row, 'method': 'linear', 'test_dice': 0.3, 'test_iou': 0.125, 'best_val_dice': 0.2},
  ]
  lines = sweep.format_comparison(rows).splitlines()
  assert lines[0].split()[:8] == ['method', 'seeds', 'test', 'dice', '%', 'test', 'iou', '%']
  assert lines[1].split()[:5] == ['gps', '1', '50.00', '25.00', '40.00']
  assert lines[2].split()[:5] == ['linear', '1', '30.00', '12.50', '20.00']


@pytest.mark.slow
def test_polyp_run_from_an_official_pth_on_generated_data(tmp_path):
  root = str(tmp_path / 'kvasir')
  kvasir.write_synthetic(root, 20, seed=3, image_size=(40, 48))
  sam = torch_sam(MICRO, seed=1)
  pth = tmp_path / 'sam_micro.pth'
  torch.save(sam.state_dict(), pth)
  _, c = _load_polyp()
  c.model.variant = ''
  c.model.update(MICRO)
  c.model.checkpoint = str(pth)
  c.data.data_dir = root
  c.data.batch_size, c.data.eval_batch_size = 4, 4
  c.train.steps = 3
  c.train.eval_untuned = True
  c.gps.save_scores = False
  rows = sweep.run_config(c, str(tmp_path / 'run' / 'gps'))
  gps = json.load(open(tmp_path / 'run' / 'gps' / 'results.json'))
  assert gps['metric'] == 'dice' and gps['splits']['test'] == 'kvasir:test'
  for key in ('test_dice', 'test_iou', 'best_val_dice'):
    assert 0.0 <= gps[key] <= 1.0
  assert set(gps['untuned']) == {'val_dice', 'val_iou', 'test_dice', 'test_iou'}
  assert gps['selection']['batches'] == 4  # one pass of 16 training images in batches of 4
  assert [r['method'] for r in rows] == ['gps']
  # The delta applied to the .pth's parameters gives the fine-tuned model: K = 1 entry per
  # neuron moved in the encoder's selected kernels, the decoder trained in full.
  d = delta_lib.load(str(tmp_path / 'run' / 'gps' / 'checkpoint'))
  assert d.manifest['model']['name'] == 'sam' and d.manifest['k'] == 1
  base = sam_torch.sam_params_from_torch(
    {k: v.numpy() for k, v in sam.state_dict().items()}, SAM(**MICRO)
  )
  tuned = delta_lib.apply_to(d, base)
  qkv = 'image_encoder/blocks_0/attn/qkv/kernel'
  moved = np.asarray(tuned[qkv]) != base[qkv]
  assert moved.any() and moved.sum(axis=0).max() == 1
  assert not np.array_equal(tuned['mask_decoder/iou_token'], base['mask_decoder/iou_token'])
  pe = 'prompt_encoder/pe_layer/positional_encoding_gaussian_matrix'
  np.testing.assert_array_equal(tuned[pe], base[pe])
  # tools/polyp_figure.py rebuilds the run from the .pth and the delta: its predictions on
  # the test split have the run's mDice and mIoU.
  cfg = method_config(c, 'gps')
  bb, params = notebook.run_params(cfg, str(tmp_path / 'run' / 'gps'))
  _, batches = experiment.eval_batches(cfg, 'test')
  images, targets, preds = seg_figures.predict_masks(cfg, bb.model, params, batches())
  assert len(targets) == 2  # 10 % of 20
  assert seg_metrics.mean_dice(preds, targets) == pytest.approx(gps['test_dice'], abs=1e-6)
  assert seg_metrics.mean_iou(preds, targets) == pytest.approx(gps['test_iou'], abs=1e-6)
  assert images.min() >= 0.0 and images.max() <= 1.0
  fig = seg_figures.overlay_figure(images, targets, {'gps': preds})
  assert len(fig.axes) == 2 * 3


def test_overlay_figure_marks_the_masks_and_titles_their_dice():
  images = np.full((2, 6, 6, 3), 0.5, np.float32)
  target = np.zeros((2, 6, 6), bool)
  target[:, 1:4, 1:4] = True
  pred = np.zeros_like(target)
  pred[0, 1:4, 1:3] = True  # 6 of the 9 target pixels: Dice 12 / 15
  fig = seg_figures.overlay_figure(images, target, {'gps': pred}, title='t')
  axes = fig.axes
  assert [a.get_title() for a in axes[:3]] == ['image', 'ground truth', 'gps: Dice 0.80']
  assert axes[5].get_title() == 'gps: Dice 0.00'
  shown = axes[1].get_images()[0].get_array()
  np.testing.assert_allclose(shown[2, 2], 0.55 * 0.5 + 0.45 * np.asarray(seg_figures.GT_COLOUR), atol=1e-6)
  np.testing.assert_allclose(shown[0, 0], 0.5)
