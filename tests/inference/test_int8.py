"""int8 synthesis in PyTorch (``precision: int8``): the PT2E int8 generator compiled by inductor, with float or
bf16 between its int8 convolutions, against fp32 eager.

Tolerance:
* int8 against fp32: PSNR >= 35 dB over [-1, 1], as ONNX Runtime's int8 (``test_export.py``): on trained
  generators the inductor int8 copy measured 36-41 dB (``benchmarks/README.md``), random deep generators 36 dB.
"""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from covid_ct_cgan.errors import InputError
from covid_ct_cgan.inference import run_synthesis
from covid_ct_cgan.inference.export import psnr
from covid_ct_cgan.inference.int8 import InductorInt8Generator

from conftest import IMAGE_SIZE, INT8_PSNR_DB, eager, make_generator, random_conditions, tiny_datalist


@pytest.fixture(scope="module", params=[False, True], ids=["int8", "int8_mixed_bf16"])
def int8_generator(request: pytest.FixtureRequest) -> InductorInt8Generator:
    return InductorInt8Generator(make_generator(), IMAGE_SIZE, list(random_conditions(8, seed=10)), batch_size=2,
                                 bf16=request.param)


@pytest.mark.integration
def test_mixed_bf16_follows_the_cpu_by_default() -> None:
    from covid_ct_cgan.precision import native_bf16_cpu

    generator = InductorInt8Generator(make_generator(), IMAGE_SIZE, list(random_conditions(2, seed=10)))
    assert generator.bf16 is native_bf16_cpu() and generator.batch_size == 1


@pytest.mark.integration
def test_inductor_int8_within_its_tolerance_of_fp32(int8_generator: InductorInt8Generator) -> None:
    quantized = [n for n in int8_generator.quantized.graph.nodes if "quantize_per_" in str(n.target)]
    assert quantized  # really quantized: quantize / dequantize nodes in the converted graph
    x = random_conditions(4, seed=11)  # not the calibration maps
    got, expected = int8_generator(x), eager(make_generator(), x)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    assert INT8_PSNR_DB <= psnr(got, expected) < float("inf")
    assert float(got.abs().max()) <= 1.0 + 1e-6  # tanh output stays in range


@pytest.mark.integration
def test_inductor_int8_runs_any_batch_per_sample(int8_generator: InductorInt8Generator) -> None:
    x = random_conditions(3, seed=12)  # compiled for 2: one full batch and one padded
    together = int8_generator(x)
    assert together.shape == (3, 1, IMAGE_SIZE, IMAGE_SIZE)
    alone = torch.cat([int8_generator(x[i:i + 1]) for i in range(3)])
    assert float((together - alone).abs().max()) <= 1e-5  # padding changes nothing per sample


def test_inductor_int8_needs_calibration_maps_of_the_grid_size() -> None:
    with pytest.raises(InputError, match="at least one calibration"):
        InductorInt8Generator(make_generator(), IMAGE_SIZE, [])
    with pytest.raises(InputError, match=r"calibration inputs are \(16, 16\), the model grid is 32 px"):
        InductorInt8Generator(make_generator(), IMAGE_SIZE, list(random_conditions(1, size=16)))


def test_missing_torchao_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    real = builtins.__import__

    def fake(name: str, *args, **kwargs):
        if name.startswith("torchao"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(InputError, match="'torchao' is needed.*pip install -r requirements.txt.*int8_onnxruntime"):
        InductorInt8Generator(make_generator(), IMAGE_SIZE, list(random_conditions(1)))


def test_a_failing_compiler_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.raises(InputError, match=r"int8 quantization with PyTorch inductor failed \(RuntimeError: no C\+\+ "
                                         r"compiler\); use precision int8_onnxruntime instead"):
        InductorInt8Generator(make_generator(), IMAGE_SIZE, list(random_conditions(1)))


@pytest.mark.integration
def test_run_synthesis_int8_records_its_precision(tmp_path: Path, builders, checkpoint_dir: Path) -> None:
    datalist = tiny_datalist(tmp_path, builders)
    common = dict(checkpoint=checkpoint_dir / "joint", input=datalist, image_size=IMAGE_SIZE, batch_size=2,
                  calibration_input=datalist)
    run_synthesis(make_generator(), output_dir=tmp_path / "int8", precision="int8", **common)
    run_synthesis(make_generator(), output_dir=tmp_path / "ort", precision="int8_onnxruntime", **common)
    import nibabel as nib

    outputs = {}
    for name, precision in (("int8", "int8"), ("ort", "int8_onnxruntime")):
        assert json.loads((tmp_path / name / "settings.json").read_text())["precision"] == precision
        outputs[name] = np.asarray(nib.load(str(tmp_path / name / "images/t_v0.nii.gz")).dataobj, dtype=np.float32)
    assert not np.array_equal(outputs["int8"], outputs["ort"])  # two different int8 engines ran
