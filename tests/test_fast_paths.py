"""The fast paths give the fp32 eager result within their stated tolerances (no timing is asserted).

Tolerances:

* synthesis (:class:`GeneratorRunner`): bf16 autocast and compiled/frozen outputs within
  40 dB PSNR of fp32 eager (data range 2, the model's [-1, 1]), the issue's bound; CPU
  micro-batches within 1e-5 of whole batches;
* training (:class:`ConditionalGanTrainer`): a bf16-autocast iteration's losses within 5%
  of the fp32 iteration's (bf16 keeps about 3 significant digits); fused Adam's losses and
  weights within 1e-4 of the per-tensor Adam's over three iterations; a compiled iteration
  (``compile=True``) equal to the eager one (``aot_eager`` backend: the same kernels) or
  within 1e-3 relative (inductor, slow test); weights and checkpoints unaffected by compiling.

And the benchmark's own arithmetic (paired ratios, PSNR, target checks) on made-up numbers.
"""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

import covid_ct_cgan.engines.trainer as trainer_module
import covid_ct_cgan.inference.synthesis as synthesis_module
from covid_ct_cgan.engines import ConditionalGanTrainer
from covid_ct_cgan.inference.synthesis import GeneratorRunner
from covid_ct_cgan.networks import DfmWeight, GlobalLocalGenerator, MultiResolutionDiscriminator, in_channels_for
from covid_ct_cgan.transforms import make_condition

SIZE = 32
CLASSES = 4
PSNR_BOUND_DB = 40.0
BF16_LOSS_RTOL = 0.05
INDUCTOR_LOSS_RTOL = 1e-3
REPO_ROOT = Path(__file__).resolve().parents[1]


def _psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0) -> float:
    mse = float(((a.float() - b.float()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse)


def _label_maps(batch: int, size: int = SIZE, seed: int = 0) -> torch.Tensor:
    """``(B, 1, S, S)`` label maps: two elliptic lungs with a GGO and a consolidation blob."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    maps = []
    for _ in range(batch):
        cx, cy = 0.3 + 0.05 * torch.rand(1, generator=g).item(), 0.5
        lung = (((x - cx) / 0.15) ** 2 + ((y - cy) / 0.3) ** 2 <= 1) | (((x - 1 + cx) / 0.15) ** 2 + ((y - cy) / 0.3) ** 2 <= 1)
        label = lung.long()
        label[lung & (((x - cx) / 0.07) ** 2 + ((y - 0.6) / 0.08) ** 2 <= 1)] = 2
        label[lung & (((x - 1 + cx) / 0.05) ** 2 + ((y - 0.6) / 0.06) ** 2 <= 1)] = 3
        maps.append(label)
    return torch.stack(maps)[:, None]


def _tiny_generator(mode: str = "joint") -> GlobalLocalGenerator:
    torch.manual_seed(0)
    return GlobalLocalGenerator(CLASSES, 1, ngf=8, n_downsampling=1, n_blocks_global=1, n_blocks_local=1, mode=mode)


# --------------------------------------------------------------------------- synthesis


@pytest.fixture(scope="module")
def conditions() -> torch.Tensor:
    return make_condition(_label_maps(3), None, CLASSES)[0]


@pytest.fixture(scope="module")
def fp32_output(conditions: torch.Tensor) -> torch.Tensor:
    return GeneratorRunner(_tiny_generator(), torch.device("cpu"), batch_size=3)(conditions)


def test_runner_bf16_within_40_db_of_fp32(conditions: torch.Tensor, fp32_output: torch.Tensor) -> None:
    out = GeneratorRunner(_tiny_generator(), torch.device("cpu"), amp=True, batch_size=3)(conditions)
    assert out.dtype == torch.float32 and out.shape == fp32_output.shape
    assert not torch.equal(out, fp32_output)  # bf16 really ran
    assert _psnr(out, fp32_output) >= PSNR_BOUND_DB


def test_runner_compiled_path_within_40_db_of_fp32(conditions: torch.Tensor, fp32_output: torch.Tensor,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled call (a fast backend) with a partial batch padded to the compiled batch size."""
    monkeypatch.setattr(synthesis_module, "COMPILE_BACKEND", "aot_eager")
    runner = GeneratorRunner(_tiny_generator(), torch.device("cpu"), compile=True, batch_size=4)
    out = runner(conditions)
    assert runner.compiled is not None and runner.compile_checked  # no silent fall-back to eager
    assert out.shape == fp32_output.shape
    assert _psnr(out, fp32_output) >= PSNR_BOUND_DB


def test_runner_cpu_micro_batches_give_the_whole_batch_result(conditions: torch.Tensor, fp32_output: torch.Tensor,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    network = _tiny_generator()
    calls: list[int] = []
    network.register_forward_pre_hook(lambda _, args: calls.append(args[0].shape[0]))
    whole = GeneratorRunner(network, torch.device("cpu"), batch_size=3, cpu_pixels_per_call=None)(conditions)
    assert calls == [3]
    calls.clear()
    parts = GeneratorRunner(network, torch.device("cpu"), batch_size=3, cpu_pixels_per_call=2 * SIZE * SIZE)(conditions)
    assert calls == [2, 1]  # two samples a call
    torch.testing.assert_close(parts, whole, rtol=0, atol=1e-5)
    torch.testing.assert_close(whole, fp32_output, rtol=0, atol=0)  # whole batches: the reference itself


@pytest.mark.slow
def test_runner_inductor_frozen_within_40_db_of_fp32(conditions: torch.Tensor, fp32_output: torch.Tensor) -> None:
    runner = GeneratorRunner(_tiny_generator(), torch.device("cpu"), compile=True, batch_size=3)
    out = runner(conditions)
    assert runner.compiled is not None and runner.compile_checked
    assert _psnr(out, fp32_output) >= PSNR_BOUND_DB


INT8_PSNR_BOUND_DB = 35.0  # justified in tests/inference/test_export.py from trained generators' figures
ORT_ATOL = 1e-4


def test_runner_onnxruntime_engines_within_their_tolerances(conditions: torch.Tensor, fp32_output: torch.Tensor,
                                                            tmp_path: Path) -> None:
    """ONNX Runtime fp32 equals eager within 1e-4; int8 (calibrated on other label maps) within 35 dB."""
    from covid_ct_cgan.inference.export import OnnxGenerator, export_onnx, quantize_int8

    fp32_path = export_onnx(_tiny_generator(), tmp_path / "g.onnx", SIZE)
    calibration = list(make_condition(_label_maps(6, seed=1), None, CLASSES)[0])
    int8_path = quantize_int8(fp32_path, tmp_path / "g8.onnx", calibration)
    for path, check in ((fp32_path, lambda out: float((out - fp32_output).abs().max()) <= ORT_ATOL),
                        (int8_path, lambda out: INT8_PSNR_BOUND_DB <= _psnr(out, fp32_output) < math.inf)):
        runner = GeneratorRunner(_tiny_generator(), torch.device("cpu"), amp=True, compile=True, batch_size=3,
                                 engine=OnnxGenerator(path, threads=1))
        out = runner(conditions)
        assert runner.compiled is None  # the engine replaces the PyTorch paths
        assert out.dtype == torch.float32 and out.shape == fp32_output.shape
        assert check(out), path.name


# --------------------------------------------------------------------------- training


def _batch(stage: str) -> dict[str, torch.Tensor]:
    size = SIZE // 2 if stage == "global" else SIZE
    label = _label_maps(2, size, seed=1)
    cond, region = make_condition(label, None, CLASSES)
    image = torch.where(label > 0, -0.6, 0.1).float() + 0.05 * torch.randn(label.shape, generator=torch.Generator().manual_seed(2))
    return {"condition": cond, "image": image, "region": region}


def _trainer(stage: str = "joint", amp: bool = False, compile: bool = False, fused: bool = False,
             channels_last: bool = False) -> ConditionalGanTrainer:
    generator = _tiny_generator(stage)
    torch.manual_seed(1)
    disc = MultiResolutionDiscriminator(CLASSES + 1, ndf=8, n_layers=2, num_d=2)
    dfm = DfmWeight(in_channels_for(8, 2, 1), mode="dynamic" if stage == "joint" else "equal", feature_index=1)

    def adam(params):
        return torch.optim.Adam(params, 2e-4, betas=(0.5, 0.999), fused=fused)

    return ConditionalGanTrainer(
        device="cpu", max_epochs=1, train_data_loader=[_batch(stage)], generator=generator, discriminator=disc,
        g_optimizer=adam(generator.parameters()), d_optimizer=adam(disc.parameters()),
        dfm_net=dfm, dfm_optimizer=adam(dfm.parameters()) if dfm.learnable else None,
        num_map_channels=CLASSES, n_layers_d=2, amp=amp, compile=compile, channels_last=channels_last,
    )


def _losses(trainer: ConditionalGanTrainer) -> dict[str, float]:
    trainer.run()
    output = trainer.state.output
    output = output[0] if isinstance(output, list) else output
    return {k: float(output[k]) for k in ("loss", "d_loss", "g_gan", "g_fm")}


@pytest.mark.parametrize("stage", ["global", "joint"])
def test_trainer_bf16_iteration_losses_close_to_fp32(stage: str) -> None:
    fp32, bf16 = _losses(_trainer(stage)), _losses(_trainer(stage, amp=True))
    assert fp32 != bf16  # bf16 really ran
    for key, value in fp32.items():
        assert bf16[key] == pytest.approx(value, rel=BF16_LOSS_RTOL), key


def test_trainer_fused_adam_matches_the_per_tensor_loop() -> None:
    """Fused Adam (the default fast path's optimizer) makes the same updates up to float rounding."""
    plain, fused = _trainer(), _trainer(fused=True)
    for _ in range(3):
        assert _losses(fused) == pytest.approx(_losses(plain), rel=1e-4)
    # weights are compared through what they compute: the biases before instance norm get only rounding
    # noise as gradient, which Adam turns into +-lr steps of either sign in both optimizers
    cond = _batch("joint")["condition"]
    with torch.no_grad():
        torch.testing.assert_close(fused.generator(cond), plain.generator(cond), rtol=0, atol=1e-4)
        for a, b in zip(plain.discriminator(cond[:, :1].repeat(1, CLASSES + 1, 1, 1)),
                        fused.discriminator(cond[:, :1].repeat(1, CLASSES + 1, 1, 1))):
            torch.testing.assert_close(b[-1], a[-1], rtol=1e-3, atol=1e-4)
    assert fused.g_optimizer.defaults["fused"] is True


def test_trainer_compile_matches_eager_and_keeps_plain_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trainer_module, "COMPILE_BACKEND", "aot_eager")
    eager, compiled = _trainer(), _trainer(compile=True)
    keys = set(compiled.generator.state_dict())
    for _ in range(2):
        assert _losses(compiled) == pytest.approx(_losses(eager), rel=1e-5)
    assert compiled._g_forward is not compiled.generator  # the iteration went through the compiled wrapper
    assert set(compiled.generator.state_dict()) == keys and not any("_orig_mod" in k for k in keys)
    assert compiled.generator.last_desum_weight is not None  # the DESUM side effect reaches the plain module
    for a, b in zip(eager.generator.parameters(), compiled.generator.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert isinstance(compiled.discriminator, MultiResolutionDiscriminator)


@pytest.mark.parametrize("amp", [False, True])
def test_trainer_channels_last_matches_contiguous(amp: bool) -> None:
    """channels_last changes the memory layout only: fp32 losses and weights equal up to float rounding over three
    iterations; with bf16 autocast the generator output stays within 40 dB of the contiguous bf16 trainer's."""
    plain, last = _trainer(amp=amp, fused=True), _trainer(amp=amp, fused=True, channels_last=True)
    conv = next(m for m in last.generator.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert set(last.generator.state_dict()) == set(plain.generator.state_dict())
    for _ in range(3):
        assert _losses(last) == pytest.approx(_losses(plain), rel=BF16_LOSS_RTOL if amp else 1e-4)
    cond = _batch("joint")["condition"]
    with torch.no_grad():
        out_plain, out_last = plain.generator(cond), last.generator(cond.contiguous(memory_format=torch.channels_last))
    if amp:
        assert _psnr(out_last, out_plain) >= PSNR_BOUND_DB
    else:
        torch.testing.assert_close(out_last, out_plain, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_trainer_inductor_iteration_close_to_eager() -> None:
    eager, compiled = _trainer(), _trainer(compile=True)
    for _ in range(2):
        assert _losses(compiled) == pytest.approx(_losses(eager), rel=INDUCTOR_LOSS_RTOL)


# --------------------------------------------------------------------------- defaults of the bundle


def test_amp_is_on_by_default_only_where_bf16_or_cuda_pays(monkeypatch: pytest.MonkeyPatch) -> None:
    from covid_ct_cgan.engines import amp_by_default

    assert amp_by_default("cuda:0") is True
    base = {name: False for name in torch.cpu.get_capabilities()}
    for capabilities, native in (({}, False), ({"avx512_bf16": True}, True), ({"amx_tile": True}, True),
                                 ({"avx2": True, "avx512_f": True}, False)):
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda c=capabilities: {**base, **c})
        assert amp_by_default(torch.device("cpu")) is native


def test_train_yaml_fast_paths_are_on_by_default(tmp_path: Path) -> None:
    """Fused Adam for the three optimizers, MONAI's ThreadDataLoader, AMP by the hardware, CUDA settings."""
    from monai.bundle import ConfigParser

    from covid_ct_cgan.engines import amp_by_default

    parser = ConfigParser()
    parser.read_config([str(REPO_ROOT / "bundle" / "configs" / "train.yaml")])
    parser.update({"stage": "joint", "work_dir": str(tmp_path), "ngf": 8, "ndf": 8, "image_size": 32})
    for name in ("g_optimizer", "d_optimizer", "dfm_optimizer"):
        assert parser.get_parsed_content(name).defaults["fused"] is True, name
    assert parser.get_parsed_content("amp") is amp_by_default(parser.get_parsed_content("device"))
    # channels-last layout: an option (off: its gain on the AMX CPU is within the noise, see benchmarks/README.md)
    assert parser.get_parsed_content("channels_last") is False
    assert parser["train"]["trainer"]["channels_last"] == "@channels_last"
    from covid_ct_cgan.errors import InputError
    from covid_ct_cgan.settings import check_overrides

    with pytest.raises(InputError, match=r"^channels_last: must be True or False, got 'yes'"):
        check_overrides(parser.get(), {"channels_last": "yes"})
    assert parser["train"]["dataloader"]["_target_"] == "ThreadDataLoader"
    # on CUDA: pinned batches copied without blocking, cuDNN autotuning (set after set_determinism)
    assert parser.get_parsed_content("cuda_fast") is (parser.get_parsed_content("device").type == "cuda")
    for key in ("train#dataloader#pin_memory", "train#trainer#non_blocking", "validate#dataloader#pin_memory",
                "validate#evaluator#non_blocking"):
        assert parser[key] == "@cuda_fast", key
    initialize = parser["initialize"]
    assert initialize.index("$setattr(torch.backends.cudnn, 'benchmark', @cuda_fast)") > 0


# --------------------------------------------------------------------------- the benchmark's arithmetic


@pytest.fixture(scope="module")
def bench():
    """The benchmark's ``measure`` and ``report`` modules (``benchmarks/`` is not a package)."""
    folder = str(REPO_ROOT / "benchmarks")
    sys.path.insert(0, folder)
    try:
        import measure
        import report
    finally:
        sys.path.remove(folder)
    return types.SimpleNamespace(measure=measure, report=report)


def test_benchmark_pairs_repeats_and_compares_outputs(bench) -> None:
    calls: list[str] = []
    out = torch.zeros(2, 1, 4, 4)

    def variant(name: str, value: float):
        return lambda: calls.append(name) or out + value

    res = bench.measure.measure({"ref": variant("ref", 0.0), "fast": variant("fast", 0.02)}, 3, torch.device("cpu"))
    assert calls == ["ref", "fast", "ref", "fast", "fast", "ref", "ref", "fast"]  # warm-up, then A B, B A, A B
    assert res["ref"]["speedup"] == {"median": 1.0, "min": 1.0, "max": 1.0, "n": 3}
    assert res["fast"]["wall_s"]["n"] == 3 and res["fast"]["cpu_speedup"]["n"] == 3
    assert set(res["fast"]["memory"]) == {"peak_mb", "increase_mb"}
    diff = bench.measure.compare(res["fast"]["output"], res["ref"]["output"])
    assert diff["max_abs"] == pytest.approx(0.02) and diff["max_abs_hu"] == pytest.approx(15.0)
    assert diff["psnr_db"] == pytest.approx(10 * math.log10(4 / 0.02**2), abs=0.01)
    assert bench.measure.compare(out, out)["psnr_db"] == "inf"
    assert bench.measure.paired([2.0, 3.0, 4.0], [1.0, 1.0, 2.0]) == {"median": 2.0, "min": 2.0, "max": 3.0, "n": 3}


def test_benchmark_targets_and_markdown(bench) -> None:
    def spread(m: float) -> dict[str, float]:
        return {"median": m, "min": m, "max": m, "n": 1}

    def res(speedup: float, peak_mb: float, psnr: float = 45.0) -> dict:
        return {"speedup": spread(speedup), "cpu_speedup": spread(speedup), "wall_s": spread(1.0), "first_s": 1.0,
                "memory": {"peak_mb": peak_mb, "increase_mb": 1.0}, "slices_per_s": 1.0,
                "difference": {"max_abs": 0.0, "max_abs_hu": 0.0, "psnr_db": psnr}}

    data = {
        "mode": "quick", "started": "now", "load_average_end": [1, 1, 1], "bf16_probe": {"reason": "probe"},
        "environment": {"cpu": "cpu", "logical_cpus": 2, "torch_threads": 2, "cpu_capability": "AVX2",
                        "cpu_native_bf16": False, "gpu": None, "torch": "t", "monai": "m", "python": "p",
                        "omp_wait_policy": "PASSIVE", "load_average_start": [1, 1, 1]},
        "memory": [{"workload": "w", "stage": "joint", "image_size": 512, "ngf": 64, "fused": True, "peak_mb": 5200.0,
                    "s_per_call": 1.0}],
        "training": [{"stage": "joint", "image_size": 512, "stage_input": 512, "ngf": 64,
                      "loss": {"fp32_eager": 1.0, "fast": 1.0, "compiled": 1.0},
                      "break_even_steps": {"fp32_eager": None, "fast": 0, "compiled": 7},
                      "results": {"fp32_eager": res(1.0, 4000.0), "fast": res(1.2, 4100.0), "compiled": res(2.5, 5200.0)}}],
        "synthesis": [{"image_size": 512, "batch": 1, "ngf": 64, "fast_path": "compiled_fp32",
                       "results": {"fp32_eager": res(1.0, 1.0), "compiled_fp32": res(6.0, 1.0, psnr=39.0)}}],
        "data": [{"image_size": 256, "loader": "DataLoader", "items_per_epoch": 4, "batch_size": 2, "num_workers": 0,
                  "epoch_s": [1, 1], "wait_s": [0.1, 0.01], "wait_share_after_first": spread(0.01)}],
    }
    met = {t["target"]: (t["met"], t["measured"]) for t in bench.report.targets(data)}
    assert met["synthesis 512, batch 1: fast path >= 5x fp32 eager, within 40 dB PSNR"][0] is False  # PSNR 39 dB
    assert met["training joint 512 ngf 64: step >= 2x fp32 eager"] == (True, "compiled 2.50x (2.50-2.50)")
    assert met["training joint 512 ngf 64 batch 1 (fused Adam): peak memory < 5 GB"] == (False, "5.08 GB (the whole process)")
    assert met["data waiting at 256 (DataLoader) < 5% of epoch time after the first epoch"][0] is True
    data["targets"] = bench.report.targets(data)
    text = bench.report.markdown(data)
    assert "| joint | 512 (512) | 64 | compiled | 1.00 | 2.50x (2.50-2.50) |" in text
    assert "compiled_fp32 (fast path)" in text and "## Targets" in text and "| no |" in text
    data["synthesis"][0]["results"]["int8_onnxruntime"] = {**res(1.3, 1.0, psnr=38.0), "prepare_s": 12.4}
    data["synthesis"][0]["results"]["int8_inductor"] = {**res(5.0, 1.0, psnr=37.0), "prepare_s": 40.2}
    table = bench.report.markdown(data)
    assert "| int8_onnxruntime (export + int8 calibration 12 s) |" in table
    assert "| int8_inductor (export + int8 calibration + compile 40 s) |" in table
    int8_target = {t["target"]: t for t in bench.report.targets(data)}["synthesis 512, batch 1: int8 >= 10x fp32 eager"]
    assert int8_target["met"] is False and int8_target["measured"].startswith("int8_inductor 5.00x")


def test_benchmark_compute_ceiling(bench, monkeypatch: pytest.MonkeyPatch) -> None:
    """FLOPs of a known convolution, and the fp32 ceiling as peak / achieved rate in the report."""
    conv = torch.nn.Conv2d(8, 16, 3, padding=1)
    x = torch.randn(2, 8, 10, 10)
    assert bench.measure.flops(lambda: conv(x)) == 2 * (2 * 10 * 10) * 16 * 8 * 9  # 2 FLOPs a multiply-add
    bound = bench.measure.compute_bound(4 * 10**9, 0.5, 32.0)  # 8 GFLOP/s against a 32 GFLOP/s peak
    assert bound == {"gflop": 4.0, "gflops": 8.0, "share_of_peak": 0.25, "fp32_ceiling_speedup": 4.0}
    # the rate from a fixed 1 ms a product: a real timing of so small a product rounds to 0.0 GFLOP/s on a loaded machine
    def one_ms(fn: Any, device: torch.device, memory: Any = None) -> tuple[float, float, dict, Any]:
        return 0.001, 0.001, {}, fn()

    monkeypatch.setattr(bench.measure, "timed", one_ms)
    peak = bench.measure.fp32_peak(torch.device("cpu"), size=64, repeats=2)
    assert peak == {"gflops": 0.5, "how": "fp32 64x64 matrix product, best of 2"}  # 2 * 64**3 FLOPs in 1 ms
    data = {"fp32_peak": {"gflops": 32.0, "how": "made up"},
            "training": [{"stage": "joint", "image_size": 256, "ngf": 32, "compute": bound}]}
    text = "\n".join(bench.report._compute(data))
    assert "| training joint 256 ngf 32 | 4 | 8 | 25% | 4.00x |" in text


def test_benchmark_results_folder_per_machine_kind(bench) -> None:
    """Each kind of machine keeps its results in its own folder, named from the recorded machine."""
    kind = bench.measure.machine_kind
    assert kind({"cpu": "AMD EPYC 7B13", "cpu_capability": "AVX2", "cpu_native_bf16": False}) == "amd-epyc-avx2"
    assert kind({"cpu": "Intel(R) Xeon(R) Processor", "cpu_capability": "AVX512", "cpu_native_bf16": True,
                 "cpu_amx": True}) == "intel-xeon-amx"
    assert kind({"cpu": "Intel(R) Xeon(R) Gold 6338 CPU", "cpu_capability": "AVX512", "cpu_native_bf16": True,
                 "cpu_amx": False}) == "intel-xeon-avx512-bf16"
    assert kind({"gpu": "NVIDIA H100 80GB HBM3", "cpu": "AMD EPYC"}) == "cuda-nvidia-h100-80gb-hbm3"
    this_machine = kind(bench.measure.environment(torch.device("cpu")))
    assert this_machine and all(c.isalnum() or c == "-" for c in this_machine)
    import json

    for saved in sorted((REPO_ROOT / "benchmarks" / "results").glob("*/*.json")):
        assert kind(json.loads(saved.read_text())["environment"]) == saved.parent.name, saved


def test_bf16_weights_probe_runs_the_same_gan_step() -> None:
    """``benchmarks/probe_bf16_weights.py`` times the same step in bf16 weights as in fp32 and under autocast: the
    same weights get gradients, and the bf16 ones agree with fp32's as closely as autocast's do."""
    folder = str(REPO_ROOT / "benchmarks")
    sys.path.insert(0, folder)
    try:
        import probe_bf16_weights as probe
    finally:
        sys.path.remove(folder)
    torch.manual_seed(0)
    config = probe.config_parser({"stage": "joint", "image_size": 64, "ngf": 8, "device": torch.device("cpu")})
    nets = {"fp32": (config.get_parsed_content("network"), config.get_parsed_content("discriminator"))}
    nets["autocast"] = tuple(probe.copy.deepcopy(n) for n in nets["fp32"])
    nets["bf16"] = tuple(probe.copy.deepcopy(n).bfloat16() for n in nets["fp32"])
    channels = next(m for m in nets["fp32"][0].modules() if isinstance(m, torch.nn.Conv2d)).in_channels
    condition, real = torch.randn(1, channels, 64, 64), torch.randn(1, 1, 64, 64)
    probe.gan_step(*nets["fp32"], condition, real, autocast=False)
    probe.gan_step(*nets["autocast"], condition, real, autocast=True)
    probe.gan_step(*nets["bf16"], condition.bfloat16(), real.bfloat16(), autocast=False)

    def agreement(variant: str, which: int) -> float:
        grads = [(a.grad, b.grad) for a, b in zip(nets["fp32"][which].parameters(), nets[variant][which].parameters())]
        assert [a is None for a, _ in grads] == [b is None for _, b in grads]  # the same weights take part
        grads = [(a, b) for a, b in grads if a is not None]
        assert len(grads) > 10 and all(torch.isfinite(b).all() for _, b in grads)
        flat = [torch.cat([g.float().flatten() for g in side]) for side in zip(*grads)]
        return float(torch.nn.functional.cosine_similarity(flat[0], flat[1], dim=0))

    for which in (0, 1):  # generator, discriminator
        assert nets["bf16"][which].parameters().__next__().grad.dtype == torch.bfloat16
        assert agreement("bf16", which) > agreement("autocast", which) - 0.02
    assert agreement("bf16", 1) > 0.99
