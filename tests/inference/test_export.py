"""ONNX export (``monai.bundle onnx_export`` and :func:`export_onnx`), ONNX Runtime against eager, int8 synthesis.

Tolerances:

* ONNX Runtime fp32 against eager PyTorch: largest absolute difference <= 1e-4 in
  the model's [-1, 1] (0.075 HU in the default window): the same fp32 arithmetic in
  another order (measured: 1.4e-6 at 32 px).
* int8 against fp32: PSNR >= 35 dB over [-1, 1] (an RMS error of at most 0.036, 27 HU in
  the default window, under a tenth of the 350-HU contrast between lung and GGO), and
  the composited output equal to the input outside the lung, as for every precision.
  Measured: 40.3 and 40.8 dB on generators trained by the demo (64 and 128 px; lung only
  39.3 and 40.8 dB, 99th-percentile error 44-46 HU; bf16 autocast: 54-56 dB), 41 dB on the
  tiny random generator here; the bound leaves 5 dB for other calibration maps and seeds.
  (A random 512-px ngf-64 generator gives only 28 dB: untrained deep nets amplify the
  rounding; ``benchmarks/README.md``.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from covid_ct_cgan.errors import InputError
from covid_ct_cgan.inference import export, run_synthesis
from covid_ct_cgan.inference.export import OnnxGenerator, calibration_conditions, export_onnx, psnr, quantize_int8

from conftest import IMAGE_SIZE, INT8_PSNR_DB, NET_SETTINGS, eager, make_generator, random_conditions, tiny_datalist

REPO_ROOT = Path(__file__).resolve().parents[2]
ORT_ATOL = 1e-4


@pytest.mark.integration
def test_monai_bundle_onnx_export_matches_eager(tmp_path: Path, checkpoint_dir: Path) -> None:
    """The documented command line: ``python -m monai.bundle onnx_export network_def`` on inference.yaml."""
    ckpt = checkpoint_dir / "joint" / "checkpoint_epoch=1.pt"
    out = tmp_path / "generator.onnx"
    settings = ["--legacy_settings", str({**NET_SETTINGS, "image_size": IMAGE_SIZE})]  # saved without a record
    cmd = [sys.executable, "-m", "monai.bundle", "onnx_export", "network_def",
           "--config_file", str(REPO_ROOT / "bundle/configs/inference.yaml"), "--ckpt_file", str(ckpt),
           "--key_in_ckpt", "generator", "--checkpoint", str(ckpt),
           "--filepath", str(out), "--input_shape", f"[1, 4, {IMAGE_SIZE}, {IMAGE_SIZE}]", *settings]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    x = random_conditions(1)
    got = OnnxGenerator(out, threads=1)(x)
    expected = eager(make_generator(), x)
    assert got.shape == expected.shape == (1, 1, IMAGE_SIZE, IMAGE_SIZE)
    assert float((got - expected).abs().max()) <= ORT_ATOL


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(make_generator(), tmp_path_factory.mktemp("onnx") / "g.onnx", IMAGE_SIZE, batch_size=2)


def test_export_onnx_runs_any_batch_like_eager(fp32_onnx: Path) -> None:
    network, runtime = make_generator(), OnnxGenerator(fp32_onnx, threads=1)
    for batch in (1, 3):
        x = random_conditions(batch, seed=batch)
        got, expected = runtime(x), eager(network, x)
        assert got.dtype == torch.float32 and got.shape == expected.shape
        assert float((got - expected).abs().max()) <= ORT_ATOL


def test_int8_model_within_its_tolerance_of_fp32(fp32_onnx: Path, tmp_path: Path) -> None:
    int8_path = quantize_int8(fp32_onnx, tmp_path / "g8.onnx", list(random_conditions(8, seed=10)))
    assert int8_path.stat().st_size < fp32_onnx.stat().st_size  # int8 weights
    x = random_conditions(4, seed=11)  # not the calibration maps
    got, expected = OnnxGenerator(int8_path, threads=1)(x), eager(make_generator(), x)
    quality = psnr(got, expected)
    assert INT8_PSNR_DB <= quality < float("inf")  # close, but really quantized
    assert float(got.abs().max()) <= 1.0 + 1e-6  # tanh output stays in range


def test_int8_needs_calibration_maps(fp32_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="at least one calibration"):
        quantize_int8(fp32_onnx, tmp_path / "g8.onnx", [])


def test_unreadable_onnx_file_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(InputError, match="bad.onnx: ONNX Runtime cannot load the model"):
        OnnxGenerator(bad)


def test_calibration_conditions_are_synthesis_inputs(tmp_path: Path, builders) -> None:
    datalist = tiny_datalist(tmp_path, builders)
    conds = calibration_conditions(datalist, IMAGE_SIZE, max_slices=2)
    assert len(conds) == 2
    for c in conds:
        assert c.shape == (4, IMAGE_SIZE, IMAGE_SIZE)
        torch.testing.assert_close(c.sum(0), torch.ones(IMAGE_SIZE, IMAGE_SIZE))  # one-hot label map
        assert bool((c[1:].sum(0) > 0).any())  # lung present
    with pytest.raises(InputError):
        calibration_conditions(datalist, IMAGE_SIZE, key="validation")


@pytest.mark.integration
def test_run_synthesis_int8_end_to_end(tmp_path: Path, builders, checkpoint_dir: Path) -> None:
    datalist = tiny_datalist(tmp_path, builders)
    common = dict(checkpoint=checkpoint_dir / "joint", input=datalist, image_size=IMAGE_SIZE, batch_size=2)
    run_synthesis(make_generator(), output_dir=tmp_path / "fp32", **common)
    run_synthesis(make_generator(), output_dir=tmp_path / "int8", precision="int8_onnxruntime",
                              calibration_input=datalist, **common)
    import nibabel as nib

    fp32 = np.asarray(nib.load(str(tmp_path / "fp32/images/t_v0.nii.gz")).dataobj, dtype=np.float32)
    int8 = np.asarray(nib.load(str(tmp_path / "int8/images/t_v0.nii.gz")).dataobj, dtype=np.float32)
    real = np.asarray(nib.load(str(tmp_path / "data/t.nii.gz")).dataobj, dtype=np.float32)
    label = np.asarray(nib.load(str(tmp_path / "int8/labels/t_v0.nii.gz")).dataobj)
    np.testing.assert_array_equal(int8[label == 0], real[label == 0])  # outside the lung: the input
    inside = label > 0
    mse = float(np.mean(((int8[inside] - fp32[inside]) / 750.0) ** 2))  # HU -> model units
    assert 0 < mse and 10 * np.log10(4 / mse) >= INT8_PSNR_DB
    settings = json.loads((tmp_path / "int8/settings.json").read_text())
    assert settings["precision"] == "int8_onnxruntime" and settings["compiled"] is False


def test_run_synthesis_int8_refuses_missing_calibration(tmp_path: Path, builders, checkpoint_dir: Path) -> None:
    datalist = tiny_datalist(tmp_path, builders)
    with pytest.raises(InputError, match="calibration_input"):
        run_synthesis(make_generator(), checkpoint_dir / "joint", tmp_path / "out", input=datalist,
                                  image_size=IMAGE_SIZE, precision="int8")
    with pytest.raises(InputError, match="precision must be one of"):
        run_synthesis(make_generator(), checkpoint_dir / "joint", tmp_path / "out", input=datalist,
                                  image_size=IMAGE_SIZE, precision="int4")


def test_missing_onnx_packages_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    real = importlib.import_module

    def fake(name: str, *args, **kwargs):
        if name.startswith("onnxruntime"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(InputError, match="'onnxruntime' is needed.*pip install -r requirements.txt"):
        export.OnnxGenerator("x.onnx")
