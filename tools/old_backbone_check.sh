#!/usr/bin/env bash
# Reproduces the README's backbone comparison: trains the demo's upstream backbone
# with the code of an older revision (default 5ebda10, upstream REVISION 1), then
# runs today's downstream code on that backbone file.
#   bash tools/old_backbone_check.sh [REV]   (about 10 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
REV=${1:-5ebda10}
WORK=$(mktemp -d)
trap 'git worktree remove --force "$WORK/old" >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT
git worktree add -q "$WORK/old" "$REV"
# The old code, run from its own tree with this checkout's virtualenv.
(cd "$WORK/old" && GPS_JAX_CACHE="$WORK/oldcache" PYTHONPATH="$WORK/old" \
  "$OLDPWD/.venv/bin/python" -m gps_jax.main --config=configs/demo.py \
  --workdir="$WORK/old_run" "--config.compare_methods=('linear','bitfit')")
# Today's code on that backbone: store it under the cache name today's config expects.
NEW_NAME=$(.venv/bin/python -c "
import importlib.util, os
from gps_jax import upstream
spec = importlib.util.spec_from_file_location('demo', 'configs/demo.py')
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
u = m.get_config().upstream
u.cache_dir = ''
print(os.path.basename(upstream.cache_path(u)))")
mkdir -p "$WORK/newcache"
cp "$WORK"/oldcache/*.npz "$WORK/newcache/$NEW_NAME"
GPS_JAX_CACHE="$WORK/newcache" .venv/bin/python -m gps_jax.main --config=configs/demo.py \
  --workdir="$WORK/new_run" "--config.compare_methods=('linear','bitfit','gps','random')"
