#!/usr/bin/env bash
# Starts this bundle's MONAI Label server (bundle/monailabel/app), bound to 127.0.0.1 unless --host says otherwise.
#
#   bundle/monailabel/start_server.sh --studies <image folder> [--port 8000] [--host 127.0.0.1] [--conf key value ...]
#
# Uses the separate venv made by bundle/monailabel/setup_env.sh ($MONAILABEL_VENV, default /work/monailabel-venv),
# called by its own python (the `monailabel` launcher would run whatever `python` is first on PATH).
# --conf keys: checkpoint_dir, segmentation_checkpoint, work_dir, and any inference.yaml / train.yaml key
# (segmentation.yaml keys as segmentation_<key>); see bundle/monailabel/app/lib/settings.py.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${MONAILABEL_VENV:-/work/monailabel-venv}"
if [[ ! -x "$VENV/bin/python" ]]; then
    echo "ERROR: no MONAI Label venv at $VENV; create it with: bash $HERE/setup_env.sh" >&2
    exit 2
fi
# defaults first: a later --host / --port on the command line wins
exec "$VENV/bin/python" -m monailabel.main start_server --app "$HERE/app" --host 127.0.0.1 --port 8000 "$@"
