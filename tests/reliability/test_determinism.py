"""Determinism on CPU: the same seed gives byte-identical phantom volumes, prepared data and synthesis outputs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from covid_ct_cgan.data.phantom import PHANTOM_MARKER, generate_phantom_dataset
from covid_ct_cgan.data.prepare import prepare_dataset
from covid_ct_cgan.inference import run_synthesis

PHANTOM = dict(num_patients=3, size=48, num_slices=3)


def digest(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` by relative path (names in ``skip`` left out)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in skip
    }


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("determinism")
    return {name: generate_phantom_dataset(root / name, seed=seed, **PHANTOM)
            for name, seed in (("a", 5), ("b", 5), ("other", 6))}


def test_same_seed_same_phantom_files(phantoms: dict[str, Path]) -> None:
    a, b, other = (digest(phantoms[k]) for k in ("a", "b", "other"))
    assert len([k for k in a if k.endswith(".nii.gz")]) == 3 * PHANTOM["num_patients"] and PHANTOM_MARKER in a
    assert a == b  # byte for byte, NIfTI headers and gzip streams included
    assert set(a) == set(other) and all(a[k] != other[k] for k in a if k.startswith("rp_im"))


def test_same_seed_same_prepared_data(phantoms: dict[str, Path], tmp_path: Path) -> None:
    outs = {}
    for run, (source, seed) in {"a": ("a", 1), "b": ("a", 1), "other_seed": ("a", 2)}.items():
        outs[run] = tmp_path / run
        prepare_dataset(str(phantoms[source]), str(outs[run]), split="paper", seed=seed)
    # the summaries name the output folder; every data file and the datalist are identical
    same = digest(outs["a"], skip=("summary.json", "summary.md"))
    assert same == digest(outs["b"], skip=("summary.json", "summary.md"))
    assert (outs["a"] / "datalist.json").read_bytes() == (outs["b"] / "datalist.json").read_bytes()
    assert (outs["a"] / "datalist.json").read_bytes() != (outs["other_seed"] / "datalist.json").read_bytes()  # split moved


def test_same_seed_same_synthesis_outputs(phantoms: dict[str, Path], tmp_path: Path, kit, generator_checkpoint: Path) -> None:
    data = tmp_path / "data"
    prepare_dataset(str(phantoms["a"]), str(data), split="paper", seed=1)

    def synthesise(name: str, seed: int) -> dict[str, str]:
        out = tmp_path / name
        run_synthesis(
            kit.make_generator(), checkpoint=generator_checkpoint, output_dir=out, input=data / "datalist.json",
            datalist_key="training", num_variants=3, seed=seed, image_size=kit.IMAGE_SIZE, batch_size=4,
        )
        return digest(out, skip=("settings.json",))

    a, b, other = synthesise("a", 11), synthesise("b", 11), synthesise("other", 12)
    assert a == b  # images, label maps, previews, manifest, datalist: byte for byte
    labels = [k for k in a if k.startswith("labels/") and not k.endswith("_v0.nii.gz")]
    assert labels and any(a[k] != other[k] for k in labels)  # another seed augments the lesions differently
