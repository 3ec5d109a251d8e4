"""Critic test on the MedSeg slices: can each discriminator, trained alone, tell real lungs from degraded ones?

Usage, from the repository root::

    python benchmarks/critic_test.py [--quick] [--seed N] [--out DIR] [--dataset-dir DIR]

The package's own preparation (``covid_ct_cgan.data.prepare.run_prepare``, ``split=predefined``: training and
validation carved from the dataset's ``train/``, the ``test/`` slices never read here) writes the slices into a
temporary folder; they go through ``train.yaml``'s deterministic pipeline with ``medseg.yaml``'s settings (since
0.12 the slices at their own pixel size on a 512-px grid, local crops of 128 px; the 0.11 settings resized them to
256 px with 64-px local crops: the table says which). For
every row a FRESH discriminator (``medseg.yaml``: ndf 32, 3 layers, 2 scales) is trained
alone on the ``training`` slices, real vs the same slice with its region degraded, with the trainer's
region-weighted least-squares loss (Adam 2e-4, betas (0.5, 0.999), batch 2), and its paired ranking accuracy
(share of region patches where ``D(real) > D(fake)``) is measured on the ``validation`` slices every few steps
(:mod:`covid_ct_cgan.evaluation.critic_test`). Rows: global D (``MultiResolutionDiscriminator``) and local D
(``LocalDiscriminator``) x norm ``instance`` / ``none`` / ``spectral`` x degradation ``mean_fill`` / ``blur``,
on the lesion-inpainting region (lesions dilated 3 px), plus the global D on the whole lung (the map-only
generator's region). Steps: local 100, global 300 (``--quick``: 40 / 100, mean fill and the lesion region only).

``--generator NAME=OUTPUT_DIR`` (``NAME``: ``map_only`` or ``lesion_inpainting``; e.g.
``lesion_inpainting=work_medseg/output_lesion_inpainting`` after the recipe) adds the third degradation: that
trained generator's own output (composited into the real slice where its training composites; run in windows of
its crop size), on its synthesis region, for each critic with the config's default norm (``d_norm``,
``local_d_norm``). The rows measure how well a fresh critic can still tell that generator's output from real.

It prints a Markdown table (a line per row while it runs) and writes ``critic_test.md`` (``critic_test_quick.md``)
and the accuracy traces as ``critic_test.json`` to ``benchmarks/results/<machine kind>/`` (named as
``benchmarks/run.py`` names it) or ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import environment, machine_kind  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results"
DEFAULT_DATASET = REPO_ROOT.parent / "shared" / "data" / "medseg-slices"
CONFIGS = REPO_ROOT / "bundle" / "configs"
NORMS = ("instance", "none", "spectral")
TARGET = 0.9


@dataclass
class Row:
    """One trained critic."""

    critic: str  # global | local
    region: str  # lesion | lung
    norm: str
    degradation: str
    steps: int
    lr: float
    accuracy: float = float("nan")
    per_scale: tuple[float, ...] = ()
    first_step: int | None = None
    d_loss: float = float("nan")
    seconds: float = 0.0
    trace: tuple[tuple[int, float], ...] = ()


def load_slices(dataset_dir: Path, work: Path) -> dict[str, Any]:
    """Prepare the dataset with the package and load the training and validation slices as model tensors.

    Returns:
        ``{"settings": ..., "training": (labels, images), "validation": (labels, images)}``: integer label maps
        and images ``(N, 1, 256, 256)`` on the model scale, through ``train.yaml``'s deterministic transforms.
    """
    from monai.bundle import ConfigParser
    from monai.data import load_decathlon_datalist
    from monai.transforms import Compose

    from covid_ct_cgan.data.prepare import run_prepare

    data_dir = work / "data"
    run_prepare(dataset_dir=str(dataset_dir), data_dir=str(data_dir), split="predefined", overwrite=True)
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.yaml"), str(CONFIGS / "medseg.yaml")])
    parser.update({"work_dir": str(work), "data_dir": str(data_dir), "stage": "joint", "dataset_dir": str(dataset_dir)})
    transform = Compose(parser.get_parsed_content("train#deterministic"))
    settings = {key: parser.get_parsed_content(key) for key in
                ("image_size", "ndf", "n_layers_d", "num_d", "local_crop", "num_classes", "context_dilation",
                 "d_norm", "local_d_norm")}
    out: dict[str, Any] = {"settings": settings}
    for key in ("training", "validation"):
        items = load_decathlon_datalist(str(data_dir / "datalist.json"), True, key)
        loaded = [transform(item) for item in items]
        labels = torch.stack([torch.as_tensor(d["label"]).round().long() for d in loaded])
        images = torch.stack([torch.as_tensor(d["image"]).float() for d in loaded])
        out[key] = (labels, images)
    return out


GENERATOR_CONFIGS = {
    "map_only": ["train.yaml", "medseg.yaml"],
    "lesion_inpainting": ["train.yaml", "medseg.yaml", "lesion_inpainting.yaml"],
}


def generator_pairs(name: str, output_dir: Path, data: dict[str, Any]) -> dict[str, Any]:
    """The training and validation pairs of real vs a trained generator's output (its last stage's weights)."""
    from covid_ct_cgan.evaluation.critic_test import generator_fakes
    from covid_ct_cgan.evaluation.models import trained_model
    from covid_ct_cgan.inference.synthesis import load_generator

    configs = [CONFIGS / f for f in GENERATOR_CONFIGS[name]]
    model = trained_model(name, configs, {"work_dir": str(output_dir.parent), "output_dir": str(output_dir)})
    model.check_trained()
    loaded = load_generator(model.network, model.checkpoint)
    model.network.eval()
    st = model.settings
    print(f"generator {name}: {loaded} (crop_size {st.get('crop_size') or 0}, condition {st['condition']})", flush=True)
    out: dict[str, Any] = {"region": st["context_region"] if st["condition"] == "map+context" else "lung"}
    for key in ("training", "validation"):
        labels, images = data[key]
        out[key] = generator_fakes(
            model.network, labels, images, data["settings"]["num_classes"], st["condition"], st["context_region"],
            st["context_dilation"], composite=st["condition"] == "map+context", window=int(st.get("crop_size") or 0))
    return out


def pairs_for(labels: torch.Tensor, images: torch.Tensor, region: str, kind: str, num_classes: int, dilation: int):
    from covid_ct_cgan.evaluation.critic_test import critic_pairs
    from covid_ct_cgan.transforms import synthesis_region

    maps = torch.nn.functional.one_hot(labels[:, 0], num_classes).movedim(-1, 1).float()
    return critic_pairs(maps, images, synthesis_region(labels, region, dilation).float(), kind)


def run_row(row: Row, data: dict[str, Any], seed: int, log) -> Row:
    from covid_ct_cgan.evaluation.critic_test import fixed_crops, train_critic
    from covid_ct_cgan.networks import MultiResolutionDiscriminator
    from covid_ct_cgan.networks.discriminator import LocalDiscriminator

    s = data["settings"]
    if row.degradation.startswith("generator:"):
        made = data["generators"][row.degradation.split(":", 1)[1]]
        train, heldout = made["training"], made["validation"]
    else:
        train = pairs_for(*data["training"], row.region, row.degradation, s["num_classes"], s["context_dilation"])
        heldout = pairs_for(*data["validation"], row.region, row.degradation, s["num_classes"], s["context_dilation"])
    torch.manual_seed(seed)
    in_channels = s["num_classes"] + 1
    if row.critic == "global":
        d = MultiResolutionDiscriminator(in_channels, s["ndf"], s["n_layers_d"], s["num_d"], norm=row.norm)
        crop, eval_every = None, 10
    else:
        d = LocalDiscriminator(in_channels, s["ndf"], s["n_layers_d"], norm=row.norm)
        crop, eval_every = s["local_crop"], 5
        heldout = fixed_crops(heldout, crop, per_image=4, seed=seed)
    start = time.perf_counter()
    result = train_critic(d, train, heldout, row.steps, eval_every=eval_every, local_crop=crop, learning_rate=row.lr,
                          seed=seed, target=TARGET)
    row.seconds = time.perf_counter() - start
    row.accuracy, row.per_scale = result.final_accuracy, tuple(result.final_per_scale)
    row.first_step, row.d_loss, row.trace = result.first_step, result.final_loss, tuple(result.trace)
    return row


HEADER = ("| critic | region | norm | degradation | steps | lr | held-out paired accuracy (per scale) "
          f"| first step >= {TARGET} | D loss (last 10 steps) | s |\n|---|---|---|---|---|---|---|---|---|---|")


def table_line(row: Row) -> str:
    scales = "/".join(f"{a:.2f}" for a in row.per_scale) if len(row.per_scale) > 1 else ""
    first = str(row.first_step) if row.first_step is not None else "not reached"
    return (f"| {row.critic} | {row.region} | {row.norm} | {row.degradation} | {row.steps} | {row.lr:g} | "
            f"{row.accuracy:.2f}{f' ({scales})' if scales else ''} | {first} | {row.d_loss:.3f} | {row.seconds:.0f} |")


def plan(args: argparse.Namespace) -> list[Row]:
    local_steps, global_steps = (40, 100) if args.quick else (100, 300)
    local_steps, global_steps = args.local_steps or local_steps, args.global_steps or global_steps
    degradations = args.degradations.split(",") if args.degradations else \
        ("mean_fill",) if args.quick else ("mean_fill", "blur")
    norms = args.norms.split(",")
    groups = [("local", "lesion", k, local_steps) for k in degradations]
    # the global rows by degradation first: mean fill (the global target) on both regions before any blur row
    groups += [("global", region, k, global_steps) for k in degradations for region in ("lesion", "lung")]
    rows = []
    for critic, region, kind, steps in groups:
        if args.quick and region == "lung":
            continue
        if args.critics and critic not in args.critics.split(","):
            continue
        if args.regions and region not in args.regions.split(","):
            continue
        rows += [Row(critic, region, n, kind, steps, args.lr) for n in norms]
    for name, _ in args.generator:
        region = "lesion" if name == "lesion_inpainting" else "lung"
        rows += [Row("local", region, args.default_norms["local"], f"generator:{name}", local_steps, args.lr),
                 Row("global", region, args.default_norms["global"], f"generator:{name}", global_steps, args.lr)]
    return rows


def write(path: Path, args: argparse.Namespace, env: dict[str, Any], data: dict[str, Any], rows: list[Row],
          started: str, planned: int) -> None:
    s = data["settings"]
    n_train, n_val = len(data["training"][0]), len(data["validation"][0])
    lines = [
        f"# Critic test{' (quick)' if args.quick else ''}",
        "",
        f"`python benchmarks/critic_test.py{' --quick' if args.quick else ''} --seed {args.seed}"
        f"{' ' + ' '.join(args.extra) if args.extra else ''}`, started {started}.",
        "",
        f"CPU: {env['cpu']} ({env['logical_cpus']} logical CPUs, {env['torch_threads']} torch threads), "
        f"torch {env['torch']}, monai {env['monai']}.",
        "",
        f"MedSeg slices ({args.dataset_dir.name}), prepared by `run_prepare(split='predefined')`: trained on the "
        f"{n_train} `training` slices, measured on the {n_val} `validation` slices (carved from train/; no test/ "
        f"slice), {s['image_size']} px. A fresh discriminator per row (ndf {s['ndf']}, {s['n_layers_d']} layers; "
        f"global: {s['num_d']} scales on the whole slice; local: {s['local_crop']}-px crops around a random "
        "region component, held out: 4 fixed crops per validation slice), trained alone on real vs degraded "
        "pairs (one-hot map + image) with the trainer's region-weighted least-squares loss, Adam betas "
        "(0.5, 0.999), batch 2. Paired accuracy: share of region patches (receptive field touching the region) "
        "where D(real) > D(degraded); 0.5 is chance. Regions: `lesion` = lesions dilated 3 px (lesion "
        "inpainting), `lung` = the whole lung (map-only generator). Degradations: `mean_fill` (the region set to "
        "its mean), `blur` (Gaussian sigma 2 px inside the region). Held-out accuracy measured every 10 (global) "
        "/ 5 (local) steps. A least-squares D that outputs 0.5 everywhere has loss 0.25 per scale.",
        "",
        HEADER,
        *[table_line(r) for r in rows],
        "",
        f"{len(rows)} of the {planned} planned rows finished (the file is rewritten after every row).",
        "",
    ]
    path.write_text("\n".join(lines))


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (local 40, global 100), mean fill, lesions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: results/<machine kind>/)")
    parser.add_argument("--dataset-dir", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--norms", default="none,spectral,instance", help=f"comma-separated subset of {NORMS}")
    parser.add_argument("--critics", default="", help="comma-separated subset of global,local (default both)")
    parser.add_argument("--regions", default="", help="comma-separated subset of lesion,lung (default both)")
    parser.add_argument("--degradations", default="", help="comma-separated subset of mean_fill,blur")
    parser.add_argument("--local-steps", type=int, default=None)
    parser.add_argument("--global-steps", type=int, default=None)
    parser.add_argument("--lr", type=float, default=2e-4, help="Adam learning rate (the trainer's 2e-4)")
    parser.add_argument("--name", default=None, help="file name stem (default critic_test[_quick])")
    parser.add_argument("--generator", action="append", default=[], metavar="NAME=OUTPUT_DIR",
                        help=f"add rows for a trained generator's output; NAME one of {sorted(GENERATOR_CONFIGS)}")
    parser.add_argument("--generator-only", action="store_true", help="only the --generator rows")
    args = parser.parse_args(argv)
    generators = []
    for spec in args.generator:
        name, _, folder = spec.partition("=")
        if name not in GENERATOR_CONFIGS or not folder:
            parser.error(f"--generator takes NAME=OUTPUT_DIR with NAME one of {sorted(GENERATOR_CONFIGS)}, got {spec!r}")
        if not Path(folder).is_dir():
            parser.error(f"--generator {spec}: {folder} is not a folder (the generator's training output_dir)")
        generators.append((name, Path(folder)))
    args.generator = generators
    args.extra = [a for a in argv if a not in ("--quick",) and not a.startswith("--seed")
                  and a != str(args.seed)]
    return args


def main(argv: list[str] | None = None) -> int:
    args = _arguments(sys.argv[1:] if argv is None else argv)
    env = environment(torch.device("cpu"))
    out = args.out or DEFAULT_OUT / machine_kind(env)
    out.mkdir(parents=True, exist_ok=True)
    stem = args.name or ("critic_test_quick" if args.quick else "critic_test")
    started = time.strftime("%Y-%m-%d %H:%M")
    print(f"CPU: {env['cpu']}; preparing {args.dataset_dir} ...", flush=True)
    with tempfile.TemporaryDirectory(prefix="critic_test_") as tmp:
        data = load_slices(args.dataset_dir, Path(tmp))
    args.default_norms = {"global": data["settings"]["d_norm"], "local": data["settings"]["local_d_norm"]}
    if args.generator:
        data["generators"] = {name: generator_pairs(name, folder, data) for name, folder in args.generator}
    rows = plan(args)
    if args.generator_only:
        rows = [r for r in rows if r.degradation.startswith("generator:")]
    print(HEADER, flush=True)
    done: list[Row] = []
    for row in rows:
        done.append(run_row(row, data, args.seed, print))
        print(table_line(row), flush=True)
        write(out / f"{stem}.md", args, env, data, done, started, len(rows))
        (out / f"{stem}.json").write_text(json.dumps(
            {"environment": env, "settings": data["settings"], "rows": [asdict(r) for r in done]}, indent=1) + "\n")
    print(f"wrote {out / f'{stem}.md'}", flush=True)
    return 0


if __name__ == "__main__":
    from covid_ct_cgan.errors import exit_on_input_error  # bad input (a dataset folder): one ERROR line

    raise SystemExit(exit_on_input_error(main)())
