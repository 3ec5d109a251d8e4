"""Training and synthesis speed and memory; every speed figure a ratio against fp32 eager in the same process.

Usage, from the repository root::

    python benchmarks/run.py [--quick] [--out DIR] [--device cpu|cuda] [--sections training,synthesis,threading,memory,data]
                             [--update]

It prints Markdown tables and writes ``DIR/<quick|full>.json`` and ``DIR/<quick|full>.md``
(default ``benchmarks/results/<machine kind>/``, e.g. ``intel-xeon-amx``; the JSON is rewritten after every case, so an
interrupted run keeps what it measured). Sections (what they build, see ``benchmarks/README.md``):

* ``training``: one iteration of the ``train#trainer`` of ``train.yaml`` + ``paper.yaml``
  (G forward, D step, DFM step, G step) on a fixed batch, per stage, ``image_size``
  256 and 512, ngf 32 and 64, batch 1: fp32 eager (the reference), ``fast`` (train.yaml's
  defaults: AMP by the hardware, fused Adam), ``channels_last`` (``fast`` + ``channels_last: true``)
  and, full mode only, ``compiled`` (``fast`` + ``compile: true``).
* ``synthesis``: :class:`covid_ct_cgan.inference.synthesis.GeneratorRunner` on phantom
  label maps at 256 and 512, batch 1 and 8: fp32 eager (whole batches), fp32 default (CPU
  micro-batches), AMP, compiled/frozen AMP and compiled/frozen fp32, with the largest
  absolute and the PSNR difference from fp32; the fast path is the fastest within 40 dB.
* ``threading`` (CPU): fp32 eager with the OpenMP wait policy unset vs ``PASSIVE``, in
  two worker processes stepped alternately (the policy is fixed when a process starts).
* ``memory``: peak memory of a worker process that only trains the joint stage at 512,
  ngf 64, batch 1 (everything resident: libraries, networks, optimizer, activations).
* ``data``: share of each epoch after the first spent waiting for the ``train.yaml``
  loader (cached, pre-resized slices; augmentation in the loader), with its
  ``DataLoader`` and with MONAI's ``ThreadDataLoader``.

On CPU the run itself uses ``OMP_WAIT_POLICY=PASSIVE`` (it restarts itself with it; pass
``--omp-wait-policy as-launched`` to keep the environment's): on a shared, busy CPU the
default spinning policy makes every figure several times slower and far noisier (the
``threading`` section measures by how much).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import (bf16_probe, compare, compute_bound, environment, flops, fp32_peak, machine_kind, measure, paired,  # noqa: E402
                     process_peak_mb, spread, sync, timed)
from report import markdown, psnr_within, targets  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "bundle" / "configs"
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results"
SECTIONS = ("training", "synthesis", "threading", "memory", "data")
WORKER_TAG = "@@bench "
LOADERS = {
    "ThreadDataLoader": None,  # train.yaml as it is: MONAI's, the next batch is prepared in a thread during the step
    "DataLoader": "DataLoader",  # torch's, num_workers 0: the batch is prepared between steps
}


@dataclass(frozen=True)
class Plan:
    """What one run measures."""

    training: list[tuple[str, int, int]]  # (stage, image_size, ngf)
    synthesis: list[tuple[int, int, int]]  # (image_size, batch, ngf)
    threading: list[dict[str, Any]]  # worker workloads: OMP_WAIT_POLICY unset vs PASSIVE
    memory: list[dict[str, Any]]  # worker workloads: peak memory of a process running only this
    data_sizes: list[int]
    amp_anyway: tuple[int, int, int] | None = None  # synthesis case whose AMP variants run even where AMP does not pay
    train_compiled: bool = True
    train_repeats: int = 5
    synthesis_repeats: int = 5
    data_epochs: int = 3
    data_items: int = 24


FULL = Plan(
    training=[(s, size, ngf) for s in ("global", "local", "joint") for size in (256, 512) for ngf in (32, 64)],
    synthesis=[(size, batch, 64) for size in (256, 512) for batch in (1, 8)],
    threading=[{"kind": "training", "stage": "joint", "image_size": 256, "ngf": 32},
               {"kind": "synthesis", "image_size": 512, "batch": 1, "ngf": 64}],
    memory=[{"kind": "training", "stage": "joint", "image_size": 512, "ngf": 64, "fused": fused} for fused in (False, True)],
    data_sizes=[256, 512],
    amp_anyway=(256, 1, 64),
)
QUICK = Plan(
    training=[("joint", 256, 32)],
    synthesis=[(512, 1, 64)],
    threading=[{"kind": "training", "stage": "joint", "image_size": 256, "ngf": 32}],
    memory=[{"kind": "training", "stage": "joint", "image_size": 512, "ngf": 64, "fused": True}],
    data_sizes=[256],
    train_compiled=False,
    train_repeats=3,
    synthesis_repeats=3,
    data_epochs=2,
    data_items=12,
)


# --------------------------------------------------------------------------- building from the bundle configs


def config_parser(overrides: dict[str, Any], paper: bool = True) -> Any:
    """``train.yaml`` (+ ``paper.yaml``: the paper's networks) with ``overrides`` (``"a#b"`` ids allowed)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(CONFIG_DIR / "train.yaml")] + ([str(CONFIG_DIR / "paper.yaml")] if paper else []))
    for key, value in overrides.items():
        parser[key] = value
    return parser


def build_trainer(device: torch.device, stage: str, image_size: int, ngf: int, amp: bool | None = False,
                  compile: bool = False, fused: bool | None = False, seed: int = 0,
                  channels_last: bool | None = False) -> tuple[Any, float]:
    """The ``train#trainer`` of ``train.yaml`` + ``paper.yaml`` for one stage, batch 1, fed one fixed batch.

    Args:
        device: where it trains.
        stage: ``global``, ``local`` or ``joint``.
        image_size: the bundle's ``image_size`` (the global stage trains at half of it).
        ngf: generator width.
        amp: the trainer's ``amp`` (``None``: train.yaml's default for ``device``).
        compile: the trainer's ``compile``.
        fused: ``fused_adam`` of ``train.yaml`` (Adam's ``fused``, one kernel for all weights) for all three
            optimizers (``None``: train.yaml's default).
        seed: seeds the weights and the batch (variants built with one seed start equal).
        channels_last: ``channels_last`` of ``train.yaml`` (networks and batch in the channels-last layout;
            ``None``: train.yaml's default).

    Returns:
        ``(trainer, state_mb)``; ``trainer.run()`` is one iteration; ``state_mb`` is the memory
        of this trainer's weights, gradients and Adam moments.
    """
    from covid_ct_cgan.transforms import make_condition

    torch.manual_seed(seed)
    overrides = {
        "stage": stage, "image_size": image_size, "ngf": ngf, "batch_size": 1, "device": device,
        "train#trainer#train_data_loader": "$[None]", "train#trainer#train_handlers": [],
        "train#trainer#max_epochs": 1, "train#trainer#compile": compile,
    }
    overrides.update({key: value for key, value in (("fused_adam", fused), ("amp", amp), ("channels_last", channels_last))
                      if value is not None})
    parser = config_parser(overrides)
    size = parser.get_parsed_content("stage_image_size")
    num_classes = parser.get_parsed_content("num_classes")
    gen = torch.Generator().manual_seed(seed)
    cond, region = make_condition(torch.randint(0, num_classes, (1, 1, size, size), generator=gen), None, num_classes)
    image = torch.rand(1, 1, size, size, generator=gen) * 2 - 1
    trainer = parser.get_parsed_content("train#trainer")
    trainer.data_loader = [{"condition": cond.to(device), "image": image.to(device), "region": region.to(device)}]
    nets = (trainer.generator, trainer.discriminator, trainer.dfm_net)
    state = sum(p.numel() * p.element_size() for net in nets if net is not None for p in net.parameters())
    return trainer, round(4 * state / 2**20, 1)  # weight, gradient and Adam's two moments


def last_loss(trainer: Any) -> float:
    """The generator loss of the trainer's last iteration."""
    output = trainer.state.output
    return float((output[0] if isinstance(output, list) else output)["loss"])


def synthesis_conditions(data_dir: Path, image_size: int, batch: int) -> torch.Tensor:
    """``(batch, C, S, S)`` generator inputs from the phantom's ``test_synthesis`` slices, made as synthesis makes them."""
    from covid_ct_cgan import intensity
    from covid_ct_cgan.inference.grid import ModelGrid
    from covid_ct_cgan.inference.inputs import collect_inputs, load_input
    from covid_ct_cgan.labels import num_classes
    from covid_ct_cgan.transforms import make_condition

    grid = ModelGrid(image_size)
    items, _ = collect_inputs(data_dir / "datalist.json", None, None, "test_synthesis")
    conds: list[torch.Tensor] = []
    for item in items:
        loaded = load_input(item)
        for z in loaded.lung_slices():
            image, label = grid.to_grid(intensity.to_model(loaded.image[:, :, z], loaded.scale), loaded.label[:, :, z])
            conds.append(make_condition(label, image, num_classes())[0])
    if not conds:
        raise RuntimeError(f"no test_synthesis slices in {data_dir}")
    return torch.stack([conds[i % len(conds)] for i in range(batch)])


def synthesis_network(device: torch.device, image_size: int, ngf: int, seed: int = 0) -> torch.nn.Module:
    """The joint generator of ``train.yaml`` + ``paper.yaml`` (random weights)."""
    torch.manual_seed(seed)
    return config_parser({"stage": "joint", "image_size": image_size, "ngf": ngf, "device": device}).get_parsed_content(
        "network")


def prepare_phantom(work: Path) -> Path:
    """A small prepared phantom dataset (4 patients, 256-px slices) in ``work/data``."""
    from covid_ct_cgan.data.prepare import prepare_if_needed

    data_dir = work / "data"
    prepare_if_needed("", str(data_dir), phantom_dir=str(work / "phantom_raw"), phantom_patients=4,
                      phantom_size=256, phantom_slices=4, seed=0)
    return data_dir


# --------------------------------------------------------------------------- sections


def _guarded(row: dict[str, Any], rows: list[dict[str, Any]], report: Callable[[], None], work: Callable[[], None]) -> None:
    """Run one case; a failure is recorded in its row and the run goes on."""
    try:
        work()
    except Exception as err:  # noqa: BLE001 - one failing case must not lose the others
        row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
        traceback.print_exc()
    rows.append(row)
    report()


def run_training(plan: Plan, device: torch.device, peak: dict[str, Any], rows: list, report: Callable[[], None]) -> None:
    """Training iteration: fp32 eager vs train.yaml's defaults, the fast path (vs ``compile: true``), per stage,
    size and ngf; and how near fp32 eager runs to the machine's fp32 ``peak``."""
    for stage, size, ngf in plan.training:
        print(f"  training {stage} image_size {size} ngf {ngf}", flush=True)
        row: dict[str, Any] = {"stage": stage, "image_size": size, "stage_input": size // 2 if stage == "global" else size,
                               "ngf": ngf, "batch": 1,
                               "variants": {"fp32_eager": {"amp": False, "fused_adam": False, "compile": False,
                                                           "channels_last": False},
                                            "fast": {"amp": None, "fused_adam": None, "compile": False,
                                                     "channels_last": None},
                                            "channels_last": {"amp": None, "fused_adam": None, "compile": False,
                                                              "channels_last": True}}}
        if plan.train_compiled:
            row["variants"]["compiled"] = {"amp": None, "fused_adam": None, "compile": True, "channels_last": None}

        def work() -> None:
            torch.compiler.reset()  # earlier cases' code counts against the recompile limit (then: silently eager)
            trainers = {}
            for name, v in row["variants"].items():
                trainers[name], row["state_mb_per_variant"] = build_trainer(
                    device, stage, size, ngf, amp=v["amp"], compile=v["compile"], fused=v["fused_adam"],
                    channels_last=v["channels_last"])
                # what train.yaml's defaults resolved to on this device
                v.update(amp=trainers[name].amp, fused_adam=bool(trainers[name].g_optimizer.defaults["fused"]),
                         channels_last=trainers[name].channels_last)
            results = measure({name: tr.run for name, tr in trainers.items()}, plan.train_repeats, device)
            for res in results.values():
                res.pop("output")
            row["results"] = results
            row["loss"] = {name: last_loss(tr) for name, tr in trainers.items()}
            ref = results["fp32_eager"]["wall_s"]["median"]
            row["break_even_steps"] = {}
            for name, res in list(results.items())[1:]:
                saved, extra = ref - res["wall_s"]["median"], res["first_s"] - res["wall_s"]["median"]
                row["break_even_steps"][name] = max(0, math.ceil(extra / saved)) if saved > 0 else None
            # after the losses were read: one more fp32 iteration, counted
            row["compute"] = compute_bound(flops(trainers["fp32_eager"].run), results["fp32_eager"]["wall_s"]["median"],
                                           peak["gflops"])

        _guarded(row, rows, report, work)


def run_synthesis(plan: Plan, device: torch.device, probe: dict[str, Any], peak: dict[str, Any], data_dir: Path,
                  rows: list, report: Callable[[], None]) -> None:
    """Synthesis throughput of the generator runner: fp32 eager, AMP, compiled AMP, compiled fp32; and how
    near fp32 eager runs to the machine's fp32 ``peak``."""
    from covid_ct_cgan.inference.synthesis import GeneratorRunner

    # name: (amp, compile, eager CPU micro-batches); fp32_eager is the plain reference, fp32_default what
    # inference.yaml runs on a CPU without native bf16 (micro-batches of CPU_PIXELS_PER_CALL pixels)
    variants = {"fp32_eager": (False, False, False), "fp32_default": (False, False, True), "amp": (True, False, True),
                "compiled_amp": (True, True, True), "compiled_fp32": (False, True, True)}
    if device.type == "cuda":
        del variants["fp32_default"]  # no micro-batches on CUDA: the same as fp32_eager
    else:  # ONNX Runtime (CPU execution provider): the exported fp32 generator and its static int8 quantization;
        # PT2E int8 compiled by inductor (precision: int8)
        variants.update({name: (False, False, False) for name in ENGINE_VARIANTS})
    amp_pays = probe["amp_pays"]
    for size, batch, ngf in plan.synthesis:
        print(f"  synthesis image_size {size} batch {batch} ngf {ngf}", flush=True)
        row: dict[str, Any] = {"image_size": size, "batch": batch, "ngf": ngf}
        amp_once = not amp_pays and plan.amp_anyway == (size, batch, ngf)
        if not amp_pays and not amp_once:
            row["skipped"] = {name: probe["reason"] for name, (amp, _, _) in variants.items() if amp}

        def work() -> None:
            from covid_ct_cgan.inference.synthesis import CPU_PIXELS_PER_CALL

            torch.compiler.reset()
            network = synthesis_network(device, size, ngf)
            conds = synthesis_conditions(data_dir, size, batch)
            runners = {name: GeneratorRunner(network, device, amp, comp, batch, CPU_PIXELS_PER_CALL if micro else None)
                       for name, (amp, comp, micro) in variants.items() if name not in ENGINE_VARIANTS}
            prepared: dict[str, float] = {}
            if device.type == "cpu":
                runners.update(engine_runners(network, device, size, batch, data_dir, prepared))
            calls = {name: (lambda r=r: r(conds)) for name, r in runners.items()}
            fp32 = ["fp32_eager"] + [n for n, (amp, _, _) in variants.items() if not amp and n != "fp32_eager"]
            amp = [n for n, (a, _, _) in variants.items() if a]
            results = measure({n: calls[n] for n in (fp32 + amp if amp_pays else fp32)}, plan.synthesis_repeats, device)
            if amp_once:  # too slow to repeat: one timed call each, against fp32 eager timed alongside
                once = measure({n: calls[n] for n in ["fp32_eager"] + amp}, 1, device)
                results.update({n: {**once[n], "note": f"one timed call: {probe['reason']}"} for n in amp})
            reference = results["fp32_eager"]["output"]
            for name, res in results.items():
                res["difference"] = compare(res.pop("output"), reference)
                res["slices_per_s"] = round(batch / res["wall_s"]["median"], 3)
                if runners[name].compiled is None and variants[name][1]:
                    res["note"] = "compile failed: ran eagerly"
                elif variants[name][1] and res["difference"]["psnr_db"] == "inf":
                    res["note"] = "compiled output bit-identical to eager: check that it compiled"
                if name in prepared:
                    res["prepare_s"] = prepared[name]  # export (and quantization) before the first call
            row["results"] = results
            # the fast path: the fastest variant whose output stays within the PSNR bound of fp32
            within = [n for n, r in results.items() if n != "fp32_eager" and psnr_within(r["difference"]["psnr_db"])]
            row["fast_path"] = max(within, key=lambda n: results[n]["speedup"]["median"]) if within else None
            row["compute"] = compute_bound(flops(calls["fp32_eager"]), results["fp32_eager"]["wall_s"]["median"],
                                           peak["gflops"])

        _guarded(row, rows, report, work)


ENGINE_VARIANTS = ("onnxruntime_fp32", "int8_onnxruntime", "int8_inductor")  # prepared before the runner
CALIBRATION_SLICES = 16


def engine_runners(network: torch.nn.Module, device: torch.device, size: int, batch: int, data_dir: Path,
                   prepared: dict[str, float]) -> dict[str, Any]:
    """The variants that run outside PyTorch's eager runner: the generator exported to ONNX (fp32, ONNX Runtime),
    its ONNX Runtime static int8 quantization, and the PT2E int8 copy compiled by inductor (both calibrated on
    the phantom's training label maps), each in a :class:`GeneratorRunner`; the seconds each took to prepare
    (export, calibration, compilation) go to ``prepared``."""
    from covid_ct_cgan.inference.export import OnnxGenerator, calibration_conditions, export_onnx, quantize_int8
    from covid_ct_cgan.inference.int8 import InductorInt8Generator
    from covid_ct_cgan.inference.synthesis import GeneratorRunner

    folder = Path(tempfile.mkdtemp(prefix="onnx_", dir=data_dir.parent))
    start = time.perf_counter()
    fp32 = export_onnx(network, folder / "generator_fp32.onnx", size)
    prepared["onnxruntime_fp32"] = round(time.perf_counter() - start, 2)
    start = time.perf_counter()
    calibration = calibration_conditions(data_dir / "datalist.json", size, max_slices=CALIBRATION_SLICES)
    calibrated = time.perf_counter() - start
    int8 = quantize_int8(fp32, folder / "generator_int8.onnx", calibration)
    prepared["int8_onnxruntime"] = round(prepared["onnxruntime_fp32"] + time.perf_counter() - start, 2)
    start = time.perf_counter()
    engines: dict[str, Any] = {"onnxruntime_fp32": OnnxGenerator(fp32), "int8_onnxruntime": OnnxGenerator(int8),
                               "int8_inductor": InductorInt8Generator(network, size, calibration, batch)}
    prepared["int8_inductor"] = round(calibrated + time.perf_counter() - start, 2)
    return {name: GeneratorRunner(network, device, batch_size=batch, engine=engine) for name, engine in engines.items()}


def _workload(spec: dict[str, Any], device: torch.device, data_dir: Path) -> Callable[[], Any]:
    """One call of a worker's workload (fp32 eager; fused Adam with ``fused``)."""
    if spec["kind"] == "training":
        trainer, _ = build_trainer(device, spec["stage"], spec["image_size"], spec["ngf"], fused=spec.get("fused", False))
        return trainer.run
    from covid_ct_cgan.inference.synthesis import GeneratorRunner

    runner = GeneratorRunner(synthesis_network(device, spec["image_size"], spec["ngf"]), device, batch_size=spec["batch"])
    conds = synthesis_conditions(data_dir, spec["image_size"], spec["batch"])
    return lambda: runner(conds)


def worker(spec_json: str) -> None:
    """A worker process: build the workload, call it once, then once per ``step`` line on stdin.

    Each reply holds the call's wall and CPU time and the process's peak memory so far
    (``VmHWM``, the whole process from its start; on CUDA the allocator's peak).
    """
    spec = json.loads(spec_json)
    device = torch.device(spec["device"])
    call = _workload(spec, device, Path(spec["data_dir"]))
    call()  # warm-up
    print(WORKER_TAG + "ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        wall, cpu, _, _ = timed(call, device)
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else process_peak_mb()
        print(WORKER_TAG + json.dumps({"wall": wall, "cpu": cpu, "peak_mb": round(peak, 1)}), flush=True)


class Workers:
    """Worker processes of this script (one workload each), stepped from here; a context manager.

    Args:
        spec: the workload (``kind`` training or synthesis and its settings).
        envs: name -> environment changes of that worker (``None`` removes a variable).
        device: where the workloads run.
        data_dir: the prepared phantom data.
    """

    def __init__(self, spec: dict[str, Any], envs: dict[str, dict[str, str | None]], device: torch.device,
                 data_dir: Path) -> None:
        self.procs: dict[str, subprocess.Popen] = {}
        payload = json.dumps({**spec, "device": str(device), "data_dir": str(data_dir)})
        for name, changes in envs.items():
            env = {k: v for k, v in os.environ.items() if changes.get(k, "") is not None}
            env.update({k: v for k, v in changes.items() if v is not None})
            self.procs[name] = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", payload],
                                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def __enter__(self) -> Workers:
        for proc in self.procs.values():
            self._reply(proc)  # built and warmed up
        return self

    def __exit__(self, *exc: Any) -> None:
        for proc in self.procs.values():
            if proc.stdin:
                proc.stdin.close()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()

    @staticmethod
    def _reply(proc: subprocess.Popen) -> str:
        for line in proc.stdout:
            if line.startswith(WORKER_TAG):
                return line[len(WORKER_TAG):].strip()
        raise RuntimeError(f"benchmark worker exited with status {proc.wait()}")

    def step(self, name: str) -> dict[str, float]:
        """One call in worker ``name``: its ``wall``, ``cpu`` and ``peak_mb``."""
        proc = self.procs[name]
        proc.stdin.write("step\n")
        proc.stdin.flush()
        return json.loads(self._reply(proc))


def run_threading(plan: Plan, data_dir: Path, rows: list, report: Callable[[], None]) -> None:
    """fp32 eager with OMP_WAIT_POLICY unset vs PASSIVE: two workers, one call each in turn (A B, B A, ...)."""
    envs = {"default": {"OMP_WAIT_POLICY": None}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"}}
    for spec in plan.threading:
        name = ", ".join(f"{k} {v}" for k, v in spec.items())
        print(f"  threading {name}", flush=True)
        row: dict[str, Any] = {"workload": name}

        def work() -> None:
            times: dict[str, dict[str, list[float]]] = {p: {"wall": [], "cpu": []} for p in envs}
            with Workers(spec, envs, torch.device("cpu"), data_dir) as workers:
                for r in range(plan.train_repeats):
                    for policy in list(envs) if r % 2 == 0 else list(envs)[::-1]:
                        reply = workers.step(policy)
                        times[policy]["wall"].append(reply["wall"])
                        times[policy]["cpu"].append(reply["cpu"])
            for policy in envs:
                row[policy] = {"wall_s": spread(times[policy]["wall"]), "cpu_s": spread(times[policy]["cpu"])}
            row["speedup"] = paired(times["default"]["wall"], times["passive"]["wall"])
            row["cpu_speedup"] = paired(times["default"]["cpu"], times["passive"]["cpu"])
            row["load_average"] = [round(x, 2) for x in os.getloadavg()]

        _guarded(row, rows, report, work)


def run_memory(plan: Plan, device: torch.device, data_dir: Path, rows: list, report: Callable[[], None]) -> None:
    """Peak memory of a process that trains only one configuration (imports and all), over a few iterations."""
    for spec in plan.memory:
        name = ", ".join(f"{k} {v}" for k, v in spec.items())
        print(f"  memory {name}", flush=True)
        row: dict[str, Any] = {"workload": name, **spec}

        def work() -> None:
            with Workers(spec, {"only": {}}, device, data_dir) as workers:
                replies = [workers.step("only") for _ in range(2)]
            row["peak_mb"] = max(r["peak_mb"] for r in replies)
            row["s_per_call"] = round(statistics.median(r["wall"] for r in replies), 2)

        _guarded(row, rows, report, work)


class EpochWaits:
    """Ignite handlers: per epoch, its wall time and the time spent getting batches (waiting for data).

    Args:
        trainer: the engine to time.
        device: where it trains (synchronised so that waiting starts when the step has finished).
    """

    def __init__(self, trainer: Any, device: torch.device) -> None:
        from ignite.engine import Events

        self.device = device
        self.epoch_s: list[float] = []
        self.wait_s: list[float] = []
        self._epoch = self._batch = 0.0
        trainer.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        trainer.add_event_handler(Events.GET_BATCH_STARTED, self._batch_started)
        trainer.add_event_handler(Events.GET_BATCH_COMPLETED, self._batch_completed)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def _epoch_started(self, _: Any) -> None:
        self.wait_s.append(0.0)
        self._epoch = time.perf_counter()

    def _batch_started(self, _: Any) -> None:
        sync(self.device)
        self._batch = time.perf_counter()

    def _batch_completed(self, _: Any) -> None:
        self.wait_s[-1] += time.perf_counter() - self._batch

    def _epoch_completed(self, _: Any) -> None:
        sync(self.device)
        self.epoch_s.append(time.perf_counter() - self._epoch)


def run_data(plan: Plan, device: torch.device, work_dir: Path, data_dir: Path, rows: list,
             report: Callable[[], None]) -> None:
    """Share of every epoch after the first that the trainer waits for the ``train.yaml`` data pipeline."""
    for size in plan.data_sizes:
        for loader, target in LOADERS.items():
            print(f"  data loading image_size {size} {loader}", flush=True)
            row: dict[str, Any] = {"image_size": size, "loader": loader, "stage": "joint",
                                   "networks": "train.yaml demo defaults", "train_yaml_default": target is None}

            def work() -> None:
                torch.manual_seed(0)
                items = "monai.data.load_decathlon_datalist(@datalist, True, 'training')"
                overrides = {"stage": "joint", "image_size": size, "epochs": plan.data_epochs, "device": device,
                             "data_dir": str(data_dir), "output_dir": str(work_dir / "output"),
                             "train#datalist": f"$({items} * {plan.data_items})[:{plan.data_items}]",
                             "train#trainer#train_handlers": []}
                if target:
                    overrides["train#dataloader#_target_"] = target
                parser = config_parser(overrides, paper=False)
                trainer = parser.get_parsed_content("train#trainer")
                timer = EpochWaits(trainer, device)
                trainer.run()
                shares = [w / e for w, e in zip(timer.wait_s, timer.epoch_s)]
                row.update({
                    "items_per_epoch": plan.data_items, "batch_size": parser.get_parsed_content("batch_size"),
                    "num_workers": parser.get_parsed_content("num_workers"),
                    "epoch_s": [round(e, 2) for e in timer.epoch_s], "wait_s": [round(w, 3) for w in timer.wait_s],
                    "wait_share_first": round(shares[0], 4),
                    "wait_share_after_first": spread(shares[1:], 4) if len(shares) > 1 else None,
                })

            _guarded(row, rows, report, work)


# --------------------------------------------------------------------------- main


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one case a section, fewer repeats, no training compile")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder of <mode>.json and <mode>.md (default: results/<machine kind>/, e.g. intel-xeon-amx)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats a variant (default: by mode)")
    parser.add_argument("--update", action="store_true",
                        help="measure only --sections again and keep the other sections of the saved results")
    parser.add_argument("--omp-wait-policy", choices=("passive", "as-launched"), default="passive",
                        help="CPU runs restart themselves with OMP_WAIT_POLICY=PASSIVE unless 'as-launched'")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.sections = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {SECTIONS}")
    return args


def main(argv: list[str]) -> dict[str, Any] | None:
    """Run the benchmark (see the module docstring) and return its results."""
    args = _arguments(argv)
    if args.worker:
        worker(args.worker)
        return None
    device = torch.device(args.device)
    if (device.type == "cpu" and args.omp_wait_policy == "passive"
            and os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE"):
        # the policy is read once, when the OpenMP runtime loads (with torch): restart with it set
        os.execve(sys.executable, [sys.executable, str(Path(__file__).resolve()), *argv],
                  {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    plan = QUICK if args.quick else FULL
    if args.repeats:
        plan = replace(plan, train_repeats=args.repeats, synthesis_repeats=args.repeats)
    if device.type == "cuda":
        plan = replace(plan, threading=[])
    mode = "quick" if args.quick else "full"
    data: dict[str, Any] = {"mode": mode, "started": time.strftime("%Y-%m-%d %H:%M"), "plan": asdict(plan),
                            "environment": environment(device), "bf16_probe": bf16_probe(device),
                            "fp32_peak": fp32_peak(device)}
    data["machine_kind"] = machine_kind(data["environment"])
    if args.out is None:  # each kind of machine keeps its own results
        args.out = DEFAULT_OUT / data["machine_kind"]
    args.out.mkdir(parents=True, exist_ok=True)
    record = data  # where this run's end load and duration go
    earlier = args.out / f"{mode}.json"
    if args.update and earlier.is_file():
        # keep the other sections of the earlier run; these sections are measured again
        kept = json.loads(earlier.read_text())
        kept.update({k: v for k, v in data.items() if k not in ("started", "environment", "bf16_probe", "fp32_peak")})
        kept.setdefault("updates", []).append({"started": data["started"], "sections": args.sections,
                                               "load_average_start": data["environment"]["load_average_start"]})
        for section in args.sections:
            kept.pop(section, None)
        data, record = kept, kept["updates"][-1]

    def report() -> None:
        record["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
        data["targets"] = targets(data)
        (args.out / f"{mode}.json").write_text(json.dumps(data, indent=1) + "\n")
        (args.out / f"{mode}.md").write_text(markdown(data))

    print(f"benchmark ({mode}) on {device}: {data['bf16_probe']['reason']}", flush=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="covid_ct_cgan_bench_") as tmp:
        work_dir = Path(tmp)
        needs_data = {"synthesis", "threading", "memory", "data"} & set(args.sections)
        data_dir = prepare_phantom(work_dir) if needs_data else work_dir
        for section in SECTIONS:
            if section not in args.sections:
                continue
            rows: list[dict[str, Any]] = data.setdefault(section, [])
            if section == "training":
                run_training(plan, device, data["fp32_peak"], rows, report)
            elif section == "synthesis":
                run_synthesis(plan, device, data["bf16_probe"], data["fp32_peak"], data_dir, rows, report)
            elif section == "threading":
                run_threading(plan, data_dir, rows, report)
            elif section == "memory":
                run_memory(plan, device, data_dir, rows, report)
            else:
                run_data(plan, device, work_dir, data_dir, rows, report)
    record["duration_s"] = round(time.perf_counter() - start, 1)
    report()
    print(markdown(data), flush=True)
    print(f"written {args.out / (mode + '.json')} and {args.out / (mode + '.md')} ({record['duration_s']:.0f} s)")
    return data


if __name__ == "__main__":
    from covid_ct_cgan.errors import exit_on_input_error  # bad input (a dataset folder): one ERROR line

    exit_on_input_error(main)(sys.argv[1:])
