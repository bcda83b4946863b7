"""Prints the GPS trainable share of a ViT for several K, from abstract shapes only.

  python tools/mask_shares.py                      # ViT-B/16, 224, K = 1 2 15 20
  python tools/mask_shares.py --variant=L/16 --k=1,2 --per_block

No weights are created (jax.eval_shape); the figures follow from the roles of
the default GPS rules: every neuron trains K inputs, every bias trains.
"""

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from gps_jax import mask_stats
from gps_jax import roles as roles_lib
from gps_jax.models import vit as vit_lib

flags.DEFINE_string('variant', 'B/16', 'ViT variant, e.g. Ti/16, S/16, B/16, L/16.')
flags.DEFINE_integer('image_size', 224, 'Input resolution.')
flags.DEFINE_integer('num_classes', 100, 'Classes of the new head.')
flags.DEFINE_list('k', ['1', '2', '15', '20'], 'Values of K.')
flags.DEFINE_bool('per_block', False, 'Also print the per-block table for each K.')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  model = vit_lib.build_vit(
    vit_lib.vit_config(FLAGS.variant, num_classes=FLAGS.num_classes, image_size=FLAGS.image_size)
  )
  x = jnp.zeros((1, FLAGS.image_size, FLAGS.image_size, 3))
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))['params']
  roles = roles_lib.assign_roles(shapes, roles_lib.GPS_RULES)
  print(f'ViT-{FLAGS.variant} at {FLAGS.image_size}px, {FLAGS.num_classes}-class head')
  print(
    f'{"K":>4}{"backbone params":>18}{"trainable":>12}{"share %":>9}'
    f'{"with head %":>13}{"neurons":>10}'
  )
  for k in map(int, FLAGS.k):
    s = mask_stats.mask_statistics(roles, k)
    print(
      f'{k:>4}{s["backbone_params"]:>18,}{s["backbone_trainable"]:>12,}'
      f'{s["share_without_head_pct"]:>9.3f}{s["share_pct"]:>13.3f}{s["neurons"]:>10,}'
    )
    if FLAGS.per_block:
      print(mask_stats.format_table(s))


if __name__ == '__main__':
  app.run(main)
