#!/usr/bin/env bash
# Creates (or completes) the separate virtual environment of the MONAI Label server.
#
#   bash bundle/monailabel/setup_env.sh            # venv at $MONAILABEL_VENV, default /work/monailabel-venv
#
# Why a separate venv: monailabel 0.8.5 (the newest release) needs numpy<2 and pydicom<3, and its server imports
# torchvision, which PyPI ships only for CUDA builds of torch; the main environment keeps torch 2.13 CPU and numpy 2.
# Idempotent: a finished venv whose pins are unchanged is left alone (delete it, or change a pin, to rebuild).
# Our package (custom/covid_ct_cgan) is not installed into it: the app imports the checkout it belongs to.
# About 2 minutes and 8 GB (the CUDA build of torch and its nvidia-* wheels).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${MONAILABEL_VENV:-/work/monailabel-venv}"
PYTHON="${PYTHON:-python3}"

# torch and torchvision are a matched pair (torchvision's C++ ops are built for one torch release).
TORCH_PINS=("torch==2.14.1" "torchvision==0.29.1")
# monailabel 0.8.5 with the bundle's monai; pydicom-seg (a monailabel dependency) breaks with pydicom 3,
# and the newest dicomweb-client / pynetdicom require pydicom 3.
MONAILABEL_PINS=("monailabel==0.8.5" "monai==1.6.1" "pydicom<3" "dicomweb-client<0.61" "pynetdicom<3")
# what our package and the bundle's training need beyond monailabel's own dependencies
EXTRA_PINS=("pytorch-ignite==0.5.5" "tensorboard>=2.16" "itk-io>=5.4" "fire>=0.6" "tqdm>=4.66" "matplotlib>=3.8")

STAMP="$VENV/.covid_ct_cgan_monailabel"
WANTED="$(printf '%s\n' "${TORCH_PINS[@]}" "${MONAILABEL_PINS[@]}" "${EXTRA_PINS[@]}")"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANTED" && -x "$VENV/bin/python" ]]; then
    echo "monailabel venv up to date: $VENV"
    exit 0
fi

start=$(date +%s)
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet)
"${PIP[@]}" "${TORCH_PINS[@]}"
"${PIP[@]}" "${TORCH_PINS[@]}" "${MONAILABEL_PINS[@]}" "${EXTRA_PINS[@]}"
# our package is not installed here: the app puts its own checkout's custom/ first on sys.path, so one venv
# serves any clone of the repository (an old editable install of it is removed)
"$VENV/bin/python" -m pip uninstall --quiet --yes covid-ct-cgan 2>/dev/null || true
"$VENV/bin/python" -m pip check
PYTHONPATH="$REPO_ROOT/custom" "$VENV/bin/python" - <<'PY'
import monai, monailabel, numpy, torch, torchvision, covid_ct_cgan.inference  # noqa: F401  (the server's imports)
print(f"monailabel {monailabel.__version__}, monai {monai.__version__}, torch {torch.__version__}, "
      f"torchvision {torchvision.__version__}, numpy {numpy.__version__}")
PY
printf '%s' "$WANTED" > "$STAMP"
echo "monailabel venv ready: $VENV ($(( $(date +%s) - start )) s, $(du -sh "$VENV" | cut -f1))"
echo "start the server: bash $REPO_ROOT/bundle/monailabel/start_server.sh --studies <folder> [--conf key value ...]"
