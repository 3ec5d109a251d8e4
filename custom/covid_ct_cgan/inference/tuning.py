"""Synthesis settings chosen by measurement on the machine at hand, cached per machine and torch version.

Two choices of :class:`~.synthesis.GeneratorRunner` depend on the CPU more than on anything else:

- **CPU slicing** (``cpu_pixels_per_call: auto``): eager batches run in slices of
  ``k`` samples; a short probe times the generator on ``k`` = 1, 2, 4, ... up to
  the batch size (a warm-up call, then the fastest of two timed calls each) and keeps
  the fastest per slice. The best size depends on the CPU's caches and kernels (the
  fixed default, 2^17 pixels, was the fastest on the AVX2 development machine;
  on the AMX machine whole batches of 2 at 128 px were, ``benchmarks/README.md``).
- **compile** (``compile: auto``): ``torch.compile`` pays only once its start-up is
  spread over enough slices. The probe times eager and compiled batches and the
  compiled start-up of a *second* process (after ``torch.compiler.reset()``, so
  inductor's on-disk cache is warm, as it is for every run after the first), and
  stores the break-even: ``start-up / (eager - compiled time per slice)`` slices
  (never, when compiled is not faster). A run compiles when it has more slices
  than that. Without a cached result a run of fewer than :data:`PROBE_MIN_BATCHES`
  batches is not probed (the probe itself compiles once) and stays eager, and so is a
  run whose eager time, estimated from the slicing probe, is under
  :data:`COMPILE_PROBE_MIN_S` (a first compile costs about a minute on a 2-core CPU, so
  a short run would wait longer for the probe than for its own slices).

Results live in ``probes.json`` of the cache folder: ``$COVID_CT_CGAN_CACHE_DIR``,
else ``$XDG_CACHE_HOME/covid_ct_cgan``, else ``~/.cache/covid_ct_cgan``; one entry per
machine (CPU model, CPU flags, torch version and threads, see :func:`machine_key`) and
workload (network shapes, image size, batch, AMP). The file is replaced atomically; a
corrupt or foreign one is ignored with a warning and re-probed. Inductor's own cache
goes to ``<cache folder>/inductor`` unless ``TORCHINDUCTOR_CACHE_DIR`` is already set
(:func:`use_inductor_cache`), so a second process compiles from the warm cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..fileio import write_json
from ..precision import autocast_context

logger = logging.getLogger(__name__)

CACHE_ENV = "COVID_CT_CGAN_CACHE_DIR"
INDUCTOR_ENV = "TORCHINDUCTOR_CACHE_DIR"
PROBE_FILE = "probes.json"
PROBE_VERSION = 1  # bump when the probes change meaning: older entries are then ignored
PROBE_MIN_BATCHES = 4  # without a cached result, runs of fewer batches stay eager (the probe compiles once)
# without a cached result, runs estimated to take less eager time than this are not compile-probed: the first
# inductor compile of the generator took 60-80 s on the 2-core AMX Xeon (probing run 83-102 s, next run 20-29 s)
COMPILE_PROBE_MIN_S = 60.0
PROBE_REPEATS = 2  # timed calls a measurement (the fastest counts), after one warm-up call
AUTO = "auto"


def cache_dir() -> Path:
    """The folder of the probe results and of inductor's cache (see the module docstring)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "covid_ct_cgan"


def use_inductor_cache() -> Path:
    """Point inductor's on-disk cache at ``<cache_dir>/inductor`` unless ``TORCHINDUCTOR_CACHE_DIR`` is set.

    Returns:
        The folder inductor uses.
    """
    if not os.environ.get(INDUCTOR_ENV):
        os.environ[INDUCTOR_ENV] = str(cache_dir() / "inductor")
    return Path(os.environ[INDUCTOR_ENV])


def _cpu_model_and_flags() -> tuple[str, str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), ""
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    flags = re.search(r"^flags\s*:\s*(.+)$", text, re.MULTILINE)
    return (model.group(1).strip() if model else platform.machine()), " ".join(sorted(set(flags.group(1).split()))) if flags else ""


def machine_key() -> str:
    """This machine as the probes see it: CPU model, a hash of its CPU flags, torch version and threads."""
    model, flags = _cpu_model_and_flags()
    digest = hashlib.sha256(flags.encode()).hexdigest()[:12]
    return f"{model} | flags {digest} | torch {torch.__version__} | threads {torch.get_num_threads()}"


def workload_key(network: torch.nn.Module, device: torch.device, image_size: int, batch_size: int, amp: bool) -> str:
    """The generator run as the probes see it: network class and parameter shapes, grid, batch, AMP, device type."""
    shapes = ";".join(f"{name}:{tuple(p.shape)}" for name, p in network.named_parameters())
    digest = hashlib.sha256(shapes.encode()).hexdigest()[:12]
    return (f"{type(network).__name__} {digest} | {device.type} | image_size {int(image_size)} | batch {int(batch_size)}"
            f" | amp {bool(amp)}")


class ProbeCache:
    """The probe results: ``{"version", "entries": {machine: {workload: {probe: result}}}}`` in one JSON file.

    Args:
        path: the file; default ``<cache_dir()>/probes.json``.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else cache_dir() / PROBE_FILE

    def _read(self) -> dict[str, Any]:
        if not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or data.get("version") != PROBE_VERSION or not isinstance(data.get("entries"), dict):
                raise ValueError(f"not a version-{PROBE_VERSION} probe file")
            return data["entries"]
        except (OSError, UnicodeDecodeError, ValueError) as err:
            logger.warning(f"{self.path}: ignoring the probe cache ({type(err).__name__}: {str(err)[:120]}); probing again")
            return {}

    def get(self, machine: str, workload: str, probe: str) -> dict[str, Any] | None:
        """A cached result, or ``None``."""
        found = self._read().get(machine, {}).get(workload, {}).get(probe)
        return found if isinstance(found, dict) else None

    def put(self, machine: str, workload: str, probe: str, result: dict[str, Any]) -> None:
        """Store a result (read, update, atomic replace: a reader never sees half a file). A folder that
        cannot be written only costs the cache: the result is still used by this run."""
        entries = self._read()
        entries.setdefault(machine, {}).setdefault(workload, {})[probe] = result
        try:
            write_json({"version": PROBE_VERSION, "entries": entries}, self.path, overwrite=True)
        except Exception as err:  # noqa: BLE001 - the cache is an optimisation; the run goes on
            logger.warning(f"{self.path}: cannot write the probe cache ({str(err)[:160]})")


# --------------------------------------------------------------------------- probes


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device, repeats: int = 1) -> float:
    """The fastest of ``repeats`` calls (the least disturbed by other work on a shared machine)."""
    best = float("inf")
    for _ in range(max(1, int(repeats))):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def _example(network: torch.nn.Module, device: torch.device, image_size: int, batch: int) -> torch.Tensor:
    channels = next(m for m in network.modules() if isinstance(m, torch.nn.Conv2d)).in_channels
    x = torch.zeros(batch, channels, image_size, image_size, device=device)
    x[:, 0] = 1.0  # a one-hot map; the time does not depend on the content
    return x


def _candidates(batch_size: int) -> list[int]:
    sizes, k = [], 1
    while k < batch_size:
        sizes.append(k)
        k *= 2
    return sizes + [int(batch_size)]


def probe_slicing(network: torch.nn.Module, device: torch.device, image_size: int, batch_size: int,
                  amp: bool) -> dict[str, Any]:
    """Time eager calls of ``k`` samples, ``k`` = 1, 2, 4, ... ``batch_size``: one warm-up call, then the fastest
    of :data:`PROBE_REPEATS` timed calls each.

    Returns:
        ``{"samples_per_call": fastest k, "seconds_per_slice": {k: s}}``.
    """
    network = network.to(device).eval()
    per_slice: dict[str, float] = {}
    with torch.inference_mode(), autocast_context(device, amp):
        for k in _candidates(batch_size):
            x = _example(network, device, image_size, k)
            network(x)
            # _timed calls the lambda before `x` changes
            per_slice[str(k)] = round(_timed(lambda: network(x), device, PROBE_REPEATS) / k, 5)  # noqa: B023
    best = min(per_slice, key=per_slice.__getitem__)
    return {"samples_per_call": int(best), "seconds_per_slice": per_slice}


def probe_compile(network: torch.nn.Module, device: torch.device, image_size: int, batch_size: int, amp: bool,
                  compile_fn: Callable[[torch.nn.Module], Callable[[torch.Tensor], torch.Tensor]]) -> dict[str, Any]:
    """Eager vs compiled batches of ``batch_size`` (fastest of :data:`PROBE_REPEATS` calls each) and the compiled
    start-up with inductor's cache warm.

    Args:
        compile_fn: compiles the network as :class:`~.synthesis.GeneratorRunner` does.

    Returns:
        ``eager_s_per_slice``, ``compiled_s_per_slice``, ``cold_startup_s`` (first compiled call of
        this probe), ``warm_startup_s`` (first call after ``torch.compiler.reset()``, less a steady
        call) and ``break_even_slices`` (``None``: compiled is not faster); if compiling fails,
        ``eager_s_per_slice``, ``error`` and ``break_even_slices`` ``None``.
    """
    network = network.to(device).eval()
    x = _example(network, device, image_size, batch_size)
    with torch.inference_mode(), autocast_context(device, amp):
        network(x)
        eager = _timed(lambda: network(x), device, PROBE_REPEATS)
        try:
            compiled = compile_fn(network)
            cold = _timed(lambda: compiled(x), device)
            steady = _timed(lambda: compiled(x), device, PROBE_REPEATS)
            torch.compiler.reset()
            compiled = compile_fn(network)
            warm = max(0.0, _timed(lambda: compiled(x), device) - steady)
        except Exception as err:  # noqa: BLE001 - any compiler failure: compiling never pays here
            logger.warning(f"compile probe: torch.compile failed ({type(err).__name__}: {str(err)[:200]})")
            return {"eager_s_per_slice": round(eager / batch_size, 5), "error": f"{type(err).__name__}: {str(err)[:200]}",
                    "break_even_slices": None}
        finally:
            torch.compiler.reset()
    saving = (eager - steady) / batch_size
    return {
        "eager_s_per_slice": round(eager / batch_size, 5), "compiled_s_per_slice": round(steady / batch_size, 5),
        "cold_startup_s": round(cold, 3), "warm_startup_s": round(warm, 3),
        "break_even_slices": int(warm / saving) + 1 if saving > 0 else None,
    }


# --------------------------------------------------------------------------- choices


@dataclass(frozen=True)
class Choice:
    """What the runner does, and why (for the log and ``settings.json``)."""

    compile: bool
    cpu_pixels_per_call: int | None
    reason: str


def _estimated_eager_s(slicing: dict[str, Any] | None, slices: int) -> float | None:
    """Eager seconds for ``slices`` at the slicing probe's fastest setting (``None`` without a probe)."""
    if not slicing or not slicing.get("seconds_per_slice"):
        return None
    return slices * min(float(v) for v in slicing["seconds_per_slice"].values())


def choose(
    network: torch.nn.Module, device: torch.device, image_size: int, batch_size: int, amp: bool,
    compile: bool | str, cpu_pixels_per_call: int | str | None, slices: int, default_pixels: int | None,
    compile_fn: Callable[[torch.nn.Module], Callable[[torch.Tensor], torch.Tensor]],
    cache: ProbeCache | None = None,
    slicing_probe: Callable[..., dict[str, Any]] | None = None,
    compile_probe: Callable[..., dict[str, Any]] | None = None,
) -> Choice:
    """Resolve ``compile: auto`` and ``cpu_pixels_per_call: auto`` from cached or new probes.

    Args:
        network: the generator.
        device: where it runs (both choices concern the CPU; on CUDA ``auto`` compiles like
            the CPU rule and never slices).
        image_size: the model grid's side.
        batch_size: slices per generator call.
        amp: bf16 autocast (CPU) / fp16 (CUDA).
        compile: ``True``, ``False`` or ``"auto"``.
        cpu_pixels_per_call: a pixel count, ``None`` (whole batches) or ``"auto"``.
        slices: how many slices the run synthesises.
        default_pixels: the slice size without a probe result (``auto`` on a run too small to probe).
        compile_fn: compiles the network as the runner does (used by the compile probe).
        cache: where results are kept; default :class:`ProbeCache` ().
        slicing_probe: measures the slicing; default :func:`probe_slicing` (tests inject results).
        compile_probe: measures compile's break-even; default :func:`probe_compile` (tests inject results).

    Returns:
        The choice, with a one-line reason.
    """
    cache = cache or ProbeCache()
    slicing_probe = slicing_probe or probe_slicing
    compile_probe = compile_probe or probe_compile
    machine = machine_key()
    workload = workload_key(network, device, image_size, batch_size, amp)
    worth_probing = slices >= PROBE_MIN_BATCHES * batch_size
    reasons: list[str] = []

    pixels: int | None = None
    if device.type != "cpu":
        pixels = None
    elif cpu_pixels_per_call != AUTO:
        pixels = None if cpu_pixels_per_call is None else int(cpu_pixels_per_call)
    else:
        found = cache.get(machine, workload, "slicing")
        if found is None and worth_probing:
            found = slicing_probe(network, device, image_size, batch_size, amp)
            cache.put(machine, workload, "slicing", found)
            reasons.append(f"slicing probed: {found['samples_per_call']} sample(s) a call")
        elif found is not None:
            reasons.append(f"slicing from the probe cache: {found['samples_per_call']} sample(s) a call")
        if found is None:
            pixels = default_pixels
            reasons.append(f"slicing: default {default_pixels} pixels (too few slices to probe)")
        else:
            samples = int(found["samples_per_call"])
            pixels = None if samples >= batch_size else samples * image_size * image_size

    use_compile = bool(compile) if compile != AUTO else False
    if compile == AUTO:
        found = cache.get(machine, workload, "compile")
        eager_s = _estimated_eager_s(cache.get(machine, workload, "slicing"), slices)
        if found is None and worth_probing and eager_s is not None and eager_s < COMPILE_PROBE_MIN_S:
            reasons.append(f"compile off: about {eager_s:.0f} s eager, under the {COMPILE_PROBE_MIN_S:.0f} s a first "
                           "compile costs (not probed)")
            return Choice(False, pixels, "; ".join(reasons))
        if found is None and worth_probing:
            found = compile_probe(network, device, image_size, batch_size, amp, compile_fn)
            cache.put(machine, workload, "compile", found)
            reasons.append("compile probed")
        elif found is not None:
            reasons.append("compile from the probe cache")
        if found is None:
            reasons.append(f"compile off: {slices} slices, too few to probe (< {PROBE_MIN_BATCHES} batches)")
        else:
            even = found.get("break_even_slices")
            use_compile = even is not None and slices > int(even)
            reasons.append(f"compile {'on' if use_compile else 'off'}: {slices} slices, break-even "
                           + ("never (compiled is not faster)" if even is None else f"{even} slices"))
    return Choice(use_compile, pixels, "; ".join(reasons) if reasons else "as configured")
