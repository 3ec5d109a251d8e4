"""Timing and memory primitives of the benchmark: paired repeats, peak memory, output differences, probes."""

from __future__ import annotations

import math
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

MB = 2**20
PSNR_RANGE = 2.0  # the model's intensity range [-1, 1]
HU_PER_UNIT = 750.0  # the default lung window (width 1500) over that range
BF16_PROBE_LIMIT = 1.5  # AMP on CPU pays only when bf16 convolutions are at most this much slower than fp32


class PeakMemory:
    """Peak memory of one call: the CUDA allocator's peak, or the process's peak resident set on Linux.

    On CPU the kernel's high-water mark is reset before the call (``/proc/self/clear_refs``),
    so ``peak_mb`` is the whole process (libraries and every variant's networks held side by
    side) at its highest during the call, and ``increase_mb`` is what the call added on top
    of what was resident before it. Where the mark cannot be reset, both are NaN.

    Args:
        device: where the measured calls run.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.before = 0.0
        self.resettable = device.type == "cuda" or self._reset_cpu()

    @staticmethod
    def _status_mb(key: str) -> float:
        found = re.search(rf"{key}:\s+(\d+) kB", Path("/proc/self/status").read_text())
        return int(found.group(1)) / 1024 if found else math.nan

    @staticmethod
    def _reset_cpu() -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def reset(self) -> None:
        """Start a measurement."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device) / MB
        elif self.resettable:
            self._reset_cpu()
            self.before = self._status_mb("VmRSS")

    def read(self) -> dict[str, float]:
        """``peak_mb`` and ``increase_mb`` since :meth:`reset`."""
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device) / MB
        elif self.resettable:
            peak = self._status_mb("VmHWM")
        else:
            return {"peak_mb": math.nan, "increase_mb": math.nan}
        return {"peak_mb": round(peak, 1), "increase_mb": round(peak - self.before, 1)}


def process_peak_mb() -> float:
    """This process's peak resident memory since it started (or since a :class:`PeakMemory` reset), Linux only."""
    return PeakMemory._status_mb("VmHWM")


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work (nothing on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, memory: PeakMemory | None = None) -> tuple[float, float, dict, Any]:
    """One call: ``(wall_s, cpu_s, memory, output)``; CPU time is the whole process's (all threads)."""
    if memory is not None:
        memory.reset()
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    sync(device)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return wall, cpu, (memory.read() if memory is not None else {}), out


def spread(values: list[float], digits: int = 3) -> dict[str, float]:
    """Median, min, max and count of a list."""
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "n": len(values),
    }


def paired(reference: list[float], other: list[float]) -> dict[str, float]:
    """Spread of the per-repeat ratios ``reference / other`` (a speed-up of ``other``)."""
    return spread([a / b for a, b in zip(reference, other)], 2)


def measure(variants: dict[str, Callable[[], Any]], repeats: int, device: torch.device) -> dict[str, dict[str, Any]]:
    """Time variants of one case against the first one (the fp32 eager reference).

    Each variant is called once (warm-up, compiling), then ``repeats`` times in
    alternating order (A B, B A, ...), so drifting load affects both sides of a ratio.

    Args:
        variants: name -> zero-argument call; the first is the reference.
        repeats: timed calls of each variant after its warm-up call.
        device: where they run (synchronised around every call on CUDA).

    Returns:
        Per variant: ``first_s`` (the warm-up call), ``wall_s`` and ``cpu_s`` spreads,
        paired ``speedup`` and ``cpu_speedup`` against the reference, ``memory`` (the
        largest peak of its timed calls) and ``output`` (of its last call).
    """
    memory = PeakMemory(device)
    raw: dict[str, dict[str, Any]] = {}
    for name, fn in variants.items():
        wall, _, _, out = timed(fn, device)
        raw[name] = {"first_s": round(wall, 3), "wall": [], "cpu": [], "mem": [], "output": out}
        print(f"    {name}: first call {wall:.2f} s", flush=True)
    names = list(variants)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            wall, cpu, mem, out = timed(variants[name], device, memory)
            raw[name]["wall"].append(wall)
            raw[name]["cpu"].append(cpu)
            raw[name]["mem"].append(mem)
            raw[name]["output"] = out
    ref = raw[names[0]]
    return {
        name: {
            "first_s": res["first_s"],
            "wall_s": spread(res["wall"]),
            "cpu_s": spread(res["cpu"]),
            "speedup": paired(ref["wall"], res["wall"]),
            "cpu_speedup": paired(ref["cpu"], res["cpu"]),
            "memory": {k: max(m[k] for m in res["mem"]) for k in ("peak_mb", "increase_mb")},
            "output": res["output"],
        }
        for name, res in raw.items()
    }


def compare(output: torch.Tensor, reference: torch.Tensor) -> dict[str, Any]:
    """Largest absolute difference (model units and HU) and PSNR (range 2) of ``output`` against ``reference``."""
    diff = (output.float() - reference.float()).abs()
    mse = float((diff**2).mean())
    max_abs = float(diff.max())
    return {
        "max_abs": round(max_abs, 6),
        "max_abs_hu": round(max_abs * HU_PER_UNIT, 2),
        "psnr_db": "inf" if mse == 0 else round(10 * math.log10(PSNR_RANGE**2 / mse), 2),
    }


def bf16_probe(device: torch.device) -> dict[str, Any]:
    """Whether AMP pays: always on CUDA; on CPU when a bf16-autocast convolution is about as fast as fp32.

    Returns:
        ``amp_pays``, the measured ``bf16_over_fp32_time`` (CPU) and a ``reason`` sentence.
    """
    if device.type == "cuda":
        return {"amp_pays": True, "reason": "CUDA: fp16 autocast with a grad scaler"}
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).eval()
    x = torch.randn(1, 64, 32, 32)
    best = {}
    with torch.inference_mode():
        for name, enabled in (("fp32", False), ("bf16", True)):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
                conv(x)
                best[name] = min(timed(lambda: conv(x), device)[0] for _ in range(3))
    slowdown = best["bf16"] / best["fp32"]
    pays = slowdown <= BF16_PROBE_LIMIT
    return {
        "amp_pays": pays,
        "bf16_over_fp32_time": round(slowdown, 1),
        "reason": f"a 64-channel 3x3 convolution takes {slowdown:.1f}x the fp32 time in bf16 autocast on this CPU"
        + ("" if pays else " (no native bf16: AMP variants skipped, AMP stays off on this CPU)"),
    }


def fp32_peak(device: torch.device, size: int = 2048, repeats: int = 10) -> dict[str, Any]:
    """The fp32 rate this machine reaches at best: a ``size`` x ``size`` matrix product, fastest of ``repeats``.

    A practical ceiling (vendor GEMM, all threads, no TF32) that no fp32 network runs above;
    divided by a network's own rate it bounds what any fp32 fast path can gain.
    """
    allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
        a @ b
        best = min(timed(lambda: a @ b, device)[0] for _ in range(repeats))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    return {"gflops": round(2 * size**3 / best / 1e9, 1), "how": f"fp32 {size}x{size} matrix product, best of {repeats}"}


def flops(fn: Callable[[], Any]) -> int:
    """Floating-point operations of one call of ``fn`` (PyTorch's counter: convolutions and matrix
    products, forward and backward; element-wise work such as norms is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def compute_bound(call_flops: int, seconds: float, peak_gflops: float) -> dict[str, Any]:
    """How close a call runs to the fp32 ceiling: its GFLOP/s, the share of the peak, and the
    largest speed-up any fp32 path could give (peak / achieved)."""
    rate = call_flops / seconds / 1e9
    return {"gflop": round(call_flops / 1e9, 1), "gflops": round(rate, 1), "share_of_peak": round(rate / peak_gflops, 3),
            "fp32_ceiling_speedup": round(peak_gflops / rate, 2)}


def environment(device: torch.device) -> dict[str, Any]:
    """The machine and software the figures come from."""
    import monai

    cpu_model = platform.processor()
    try:
        found = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        cpu_model = found.group(1).strip() if found else cpu_model
    except OSError:
        pass
    from covid_ct_cgan.engines import native_bf16_cpu

    native_bf16 = native_bf16_cpu()
    return {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu": cpu_model,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset (libgomp spins before sleeping)"),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_native_bf16": native_bf16,
        "cpu_amx": bool(torch.cpu.get_capabilities().get("amx_tile")),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }


def machine_kind(env: dict[str, Any]) -> str:
    """The folder name of a machine kind under ``results/``: vendor and family of the CPU and its
    widest matrix unit (``amd-epyc-avx2``, ``intel-xeon-amx``), or ``cuda-<gpu>`` on a GPU.

    Args:
        env: :func:`environment`'s record of the machine (older records without ``cpu_amx`` count as no AMX).

    Returns:
        A lower-case name of letters, digits and ``-``.
    """
    def slug(text: str) -> str:
        return re.sub(r"[^a-z0-9]+", "-", re.sub(r"\((r|tm)\)", "", text.lower())).strip("-")

    if env.get("gpu"):
        return "cuda-" + slug(env["gpu"])
    words = [w for w in slug(env.get("cpu") or "cpu").split("-") if w not in ("processor", "cpu")]
    name = "-".join(words[:2]) or "cpu"
    if env.get("cpu_amx"):
        unit = "amx"
    elif env.get("cpu_native_bf16"):
        unit = "avx512-bf16"
    else:
        unit = slug(env.get("cpu_capability") or "default")
    return f"{name}-{unit}"
