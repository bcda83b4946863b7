"""TensorBoard event files beside metrics.jsonl (gps_jax.metrics through clu's summary
writer), read back with TensorFlow's event reader and compared with the JSON records."""

import glob
import math

import numpy as np
import pytest

from gps_jax import metrics

from tb_events import events


def test_every_record_is_a_scalar_named_kind_slash_key(tmp_path):
  log = metrics.MetricsLog(str(tmp_path))
  log.write('train', 5, loss=0.5, accuracy=0.25, lr=1e-3, images_per_s=123.0)
  log.write('eval', 10, val=0.75, val_ema=0.8)
  log.write('final', 10, test=0.625)
  log.write('train', 15, loss=float('nan'), accuracy=0.0, lr=1e-3, images_per_s=1.0)
  log.close()
  got = events(tmp_path)
  records = metrics.read(str(tmp_path))
  want = {}
  for r in records:
    for k, v in r.items():
      if k not in ('kind', 'step', 'time'):
        want[f'{r["kind"]}/{k}', r['step']] = float(v)  # 'nan' in JSON reads as float('nan')
  assert set(got) == set(want) and len(want) == 11
  for key, value in want.items():
    if math.isnan(value):
      assert math.isnan(got[key]), key
    else:
      assert got[key] == pytest.approx(value, rel=1e-6), key
  assert records[-1]['loss'] == 'nan'  # JSON has no NaN: the record keeps it as a string


def test_a_resumed_log_adds_an_event_file_and_nothing_without_a_workdir(tmp_path):
  first = metrics.MetricsLog(str(tmp_path))
  first.write('train', 5, loss=1.0)
  first.close()
  again = metrics.MetricsLog(str(tmp_path))
  again.write('train', 10, loss=0.5)
  again.close()
  files = glob.glob(str(tmp_path / metrics.TENSORBOARD_DIR / 'events.out.tfevents.*'))
  assert len(files) == 2
  assert events(tmp_path) == {('train/loss', 5): 1.0, ('train/loss', 10): 0.5}
  nothing = metrics.MetricsLog(None)
  nothing.write('train', 1, loss=np.float32(2.0))  # no workdir: no file, no error
  nothing.close()
