"""The benchmark's results as Markdown, and the issue's targets checked against them."""

from __future__ import annotations

import math
from typing import Any

GB = 1024.0  # MB per GB
TRAINING_TARGET = 2.0
SYNTHESIS_TARGET = 5.0
INT8_TARGET = 10.0  # the target of int8 synthesis at 512 px on a native-bf16/AMX CPU
PSNR_TARGET_DB = 40.0
DATA_WAIT_TARGET = 0.05
MEMORY_TARGET_GB = 5.0


def ratio(s: dict[str, float] | None) -> str:
    """``median x (min-max)`` of a paired-ratio spread."""
    if not s:
        return "-"
    return f"{s['median']:.2f}x ({s['min']:.2f}-{s['max']:.2f})"


def _memory(res: dict[str, Any]) -> str:
    m = res.get("memory") or {}
    if not m or math.isnan(m.get("peak_mb", math.nan)):
        return "-"
    return f"{m['peak_mb'] / GB:.2f} (+{m['increase_mb'] / GB:.2f})"


def psnr_within(psnr: Any) -> bool:
    """Whether a PSNR against fp32 (a number or ``"inf"``) meets the issue's bound."""
    return psnr == "inf" or float(psnr) >= PSNR_TARGET_DB


def _ceiling(row: dict[str, Any]) -> str:
    c = row.get("compute")
    return f"; fp32 eager already at {100 * c['share_of_peak']:.0f}% of the fp32 peak (fp32 ceiling {c['fp32_ceiling_speedup']:.2f}x)" if c else ""


def _loader(row: dict[str, Any]) -> str:
    return row["loader"] + (", train.yaml default" if row.get("train_yaml_default") else "")


def targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets with what was measured: ``{"target", "measured", "met"}`` rows."""
    out: list[dict[str, Any]] = []
    for row in data.get("synthesis", []):
        res = row.get("results", {}).get(row.get("fast_path"))
        if row["image_size"] != 512 or res is None:
            continue
        psnr = res["difference"]["psnr_db"]
        out.append({
            "target": f"synthesis 512, batch {row['batch']}: fast path >= {SYNTHESIS_TARGET:g}x fp32 eager, "
                      f"within {PSNR_TARGET_DB:g} dB PSNR",
            "measured": f"{row['fast_path']} {ratio(res['speedup'])}, PSNR {psnr} dB{_ceiling(row)}",
            "met": res["speedup"]["median"] >= SYNTHESIS_TARGET and psnr_within(psnr),
        })
    for row in data.get("synthesis", []):
        int8 = {n: r for n, r in row.get("results", {}).items() if n.startswith("int8")}
        if row["image_size"] != 512 or not int8:
            continue
        name = max(int8, key=lambda n: int8[n]["speedup"]["median"])
        out.append({
            "target": f"synthesis 512, batch {row['batch']}: int8 >= {INT8_TARGET:g}x fp32 eager",
            "measured": f"{name} {ratio(int8[name]['speedup'])}, PSNR {int8[name]['difference']['psnr_db']} dB "
                        "(random weights; quality on trained generators: benchmarks/README.md)",
            "met": int8[name]["speedup"]["median"] >= INT8_TARGET,
        })
    for row in data.get("training", []):
        results = row.get("results")
        if not results:
            continue
        best = max((n for n in results if n != "fp32_eager"), key=lambda n: results[n]["speedup"]["median"])
        out.append({
            "target": f"training {row['stage']} {row['image_size']} ngf {row['ngf']}: step >= {TRAINING_TARGET:g}x fp32 eager",
            "measured": f"{best} {ratio(results[best]['speedup'])}{_ceiling(row)}",
            "met": results[best]["speedup"]["median"] >= TRAINING_TARGET,
        })
    for row in data.get("memory", []):
        if "peak_mb" in row:
            out.append({
                "target": f"training {row['stage']} {row['image_size']} ngf {row['ngf']} batch 1"
                          f"{' (fused Adam)' if row.get('fused') else ''}: peak memory < {MEMORY_TARGET_GB:g} GB",
                "measured": f"{row['peak_mb'] / GB:.2f} GB (the whole process)",
                "met": row["peak_mb"] / GB < MEMORY_TARGET_GB,
            })
    for row in data.get("data", []):
        share = row.get("wait_share_after_first")
        if share:
            out.append({
                "target": f"data waiting at {row['image_size']} ({_loader(row)}) < {100 * DATA_WAIT_TARGET:g}% "
                          "of epoch time after the first epoch",
                "measured": f"{100 * share['median']:.1f}% (max {100 * share['max']:.1f}%)",
                "met": share["max"] < DATA_WAIT_TARGET,
            })
    return out


def _section(title: str, columns: list[str], note: str = "") -> list[str]:
    """A Markdown section: a blank line, the heading, an optional paragraph, the table's header and rule."""
    return ["", f"## {title}", "", *([note, ""] if note else []), "| " + " | ".join(columns) + " |",
            "|" + "---|" * len(columns)]


def _training(rows: list[dict[str, Any]]) -> list[str]:
    lines = _section("Training step (batch 1; paper networks: 9 + 3 residual blocks, ndf 64, 2 scales)",
                     ["stage", "image_size (stage input)", "ngf", "variant", "s/step", "speed-up", "CPU-time ratio",
                      "first step s", "break-even steps", "process peak GB, all variants held (+ step)",
                      "loss after the run"])
    for row in rows:
        head = f"| {row['stage']} | {row['image_size']} ({row['stage_input']}) | {row['ngf']} "
        if "results" not in row:
            lines.append(head + f"| error: {row.get('error')} |||||||")
            continue
        for name, r in row["results"].items():
            even = row.get("break_even_steps", {}).get(name, "-")
            lines.append(
                head + f"| {name} | {r['wall_s']['median']:.2f} | {ratio(r['speedup'])} | {ratio(r['cpu_speedup'])} "
                f"| {r['first_s']:.1f} | {'never' if even is None else even} | {_memory(r)} | {row['loss'][name]:.4f} |")
    return lines


def _synthesis(rows: list[dict[str, Any]]) -> list[str]:
    lines = _section("Synthesis (GeneratorRunner, joint generator, 9 + 3 residual blocks)",
                     ["image_size", "batch", "ngf", "variant", "slices/s", "speed-up", "CPU-time ratio", "first call s",
                      "max abs diff (HU)", "PSNR vs fp32 dB", "peak memory GB (+ call)"])
    for row in rows:
        head = f"| {row['image_size']} | {row['batch']} | {row['ngf']} "
        if "results" not in row:
            lines.append(head + f"| error: {row.get('error')} |||||||")
            continue
        for name, r in row["results"].items():
            d = r["difference"]
            mark = " (fast path)" if name == row.get("fast_path") else ""
            note = " (one timed call)" if r.get("note", "").startswith("one timed call") else ""
            note = " (compile failed: ran eagerly)" if r.get("note", "").startswith("compile failed") else note
            steps = "export + int8 calibration" + (" + compile" if "inductor" in name else "") if "int8" in name else "export"
            note += f" ({steps} {r['prepare_s']:.0f} s)" if "prepare_s" in r else ""
            lines.append(
                head + f"| {name}{mark}{note} | {r['slices_per_s']:.3f} | {ratio(r['speedup'])} | {ratio(r['cpu_speedup'])} "
                f"| {r['first_s']:.1f} | {d['max_abs']:.2e} ({d['max_abs_hu']:.1f}) | {d['psnr_db']} | {_memory(r)} |")
        for name, why in row.get("skipped", {}).items():
            lines.append(head + f"| {name} | skipped: {why} |||||||")
    return lines


def _threading(rows: list[dict[str, Any]]) -> list[str]:
    lines = _section("OpenMP wait policy (fp32 eager, two worker processes stepped alternately)",
                     ["workload", "s/call, OMP_WAIT_POLICY unset", "s/call, PASSIVE", "speed-up of PASSIVE",
                      "CPU-time ratio", "load average during"])
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['workload']} | error: {row['error']} |||||")
            continue
        lines.append(
            f"| {row['workload']} | {row['default']['wall_s']['median']:.2f} | {row['passive']['wall_s']['median']:.2f} "
            f"| {ratio(row['speedup'])} | {ratio(row['cpu_speedup'])} | {row['load_average']} |")
    return lines


def _memory_rows(rows: list[dict[str, Any]]) -> list[str]:
    lines = _section("Peak memory of a process that only trains (imports, networks, Adam, activations)",
                     ["workload", "peak memory GB", "s/step"])
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['workload']} | error: {row['error']} ||")
            continue
        lines.append(f"| {row['workload']} | {row['peak_mb'] / GB:.2f} | {row['s_per_call']:.2f} |")
    return lines


def _data(rows: list[dict[str, Any]]) -> list[str]:
    lines = _section("Data loading (train.yaml pipeline, its demo networks, joint stage)",
                     ["image_size", "loader", "items/epoch", "batch", "workers", "epoch s", "waiting s",
                      "waiting share after epoch 1"])
    for row in rows:
        head = f"| {row['image_size']} | {_loader(row)} "
        if row.get("error"):
            lines.append(head + f"| error: {row['error']} ||||||")
            continue
        share = row["wait_share_after_first"]
        lines.append(
            head + f"| {row['items_per_epoch']} | {row['batch_size']} | {row['num_workers']} | {row['epoch_s']} "
            f"| {row['wait_s']} | " + (f"{100 * share['median']:.1f}% (max {100 * share['max']:.1f}%) |" if share else "- |"))
    return lines


def _compute(data: dict[str, Any]) -> list[str]:
    peak = data.get("fp32_peak")
    cases = [(f"training {r['stage']} {r['image_size']} ngf {r['ngf']}", r["compute"]) for r in data.get("training", [])
             if r.get("compute")]
    cases += [(f"synthesis {r['image_size']} batch {r['batch']} ngf {r['ngf']}", r["compute"])
              for r in data.get("synthesis", []) if r.get("compute")]
    if not peak or not cases:
        return []
    lines = _section(f"fp32 compute ceiling (peak {peak['gflops']:g} GFLOP/s: {peak['how']})",
                     ["case", "GFLOP a call", "fp32 eager GFLOP/s", "share of peak", "fp32 ceiling"],
                     note="fp32 eager's rate on the convolutions and matrix products it runs; no fp32 path can be faster "
                          "than peak / rate (the ceiling); larger speed-ups need lower precision that this hardware "
                          "runs natively.")
    lines += [f"| {name} | {c['gflop']:g} | {c['gflops']:g} | {100 * c['share_of_peak']:.0f}% | {c['fp32_ceiling_speedup']:.2f}x |"
              for name, c in cases]
    return lines


def markdown(data: dict[str, Any]) -> str:
    """All results as Markdown: machine, then one table a section, then the targets."""
    env = data["environment"]
    lines = [
        f"# Benchmark ({data['mode']}, {data['started']})",
        "",
        f"Machine: {env['cpu']}, {env['logical_cpus']} logical CPUs, {env['cpu_capability']}, native bf16 "
        f"{env['cpu_native_bf16']}; " + (f"GPU {env['gpu']}" if env["gpu"] else "no GPU") + f". torch {env['torch']} "
        f"({env['torch_threads']} threads, OMP_WAIT_POLICY {env['omp_wait_policy']}), MONAI {env['monai']}, "
        f"Python {env['python']}.",
        f"Load average (1, 5, 15 min): {env['load_average_start']} at the start, {data.get('load_average_end')} at the end"
        + (f"; {data['duration_s']:.0f} s in all." if "duration_s" in data else "."),
        f"AMP: {data['bf16_probe']['reason']}.",
        *[f"Re-measured {u['started']} (load average {u['load_average_start']} at the start, {u.get('load_average_end')} "
          f"at the end): {', '.join(u['sections'])}." for u in data.get("updates", [])],
        "",
        "Speed-ups are t(fp32 eager) / t(variant) over paired repeats in one process: median (min-max).",
    ]
    for key, render in (("training", _training), ("synthesis", _synthesis), ("threading", _threading),
                        ("memory", _memory_rows), ("data", _data)):
        if data.get(key):
            lines += render(data[key])
    lines += _compute(data)
    if data.get("targets"):
        lines += _section("Targets", ["target", "measured", "met"])
        lines += [f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else 'no'} |" for t in data["targets"]]
    return "\n".join(lines) + "\n"
