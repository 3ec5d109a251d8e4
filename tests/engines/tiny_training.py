"""Settings of tiny train.yaml runs: a 3-patient 64-px phantom, 32-px images, 8-channel networks."""

from __future__ import annotations

from pathlib import Path


REPO_ROOT = Path(__file__).resolve().parents[2]
TRAIN_YAML = str(REPO_ROOT / "bundle" / "configs" / "train.yaml")

# the smallest settings at which every stage still has its real structure
TINY = {
    "image_size": 32,
    "epochs": 2,
    "batch_size": 2,
    "ngf": 8,
    "n_downsampling": 1,
    "n_blocks_global": 1,
    "n_blocks_local": 1,
    "ndf": 8,
    "n_layers_d": 2,
    "sample_count": 2,
    "phantom_patients": 3,
    "phantom_slices": 4,
    "phantom_size": 64,
    "amp": False,
}


def tiny_cli(work_dir: Path, **extra: object) -> list[str]:
    """``--key value`` arguments of a tiny run in ``work_dir``."""
    args = {**TINY, "work_dir": str(work_dir), **extra}
    out: list[str] = []
    for key, value in args.items():
        out += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    return out


