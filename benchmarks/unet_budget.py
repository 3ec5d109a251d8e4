"""How wide a segmentation UNet the recipe can train three times per experiment within its 2-hour budget.

Times one training iteration (forward, DiceCE loss, backward, Adam step) of MONAI's 2D ``UNet`` at the recipe's
segmentation size (256 px, batch 4, 3 classes) for several widths, alternating the variants in one process, and
prints each one's seconds an iteration, its speed against the widest (the 0.11 recipe's [32 ... 512], 2 residual
units) and the minutes one UNet of the recipe takes (``--iterations`` a run: 100 epochs x 12 batches of the 45
training slices). Writes ``results/<machine kind>/unet_budget.md``::

    python benchmarks/unet_budget.py            # about a minute on 2 cores
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from monai.losses import DiceCELoss
from monai.networks.nets import UNet

sys.path.insert(0, str(Path(__file__).resolve().parent))
import measure  # noqa: E402  (the benchmarks folder is not a package)

WIDTHS = {
    "32-512, 2 res units (0.11 recipe)": ([32, 64, 128, 256, 512], 2),
    "32-512, 1 res unit": ([32, 64, 128, 256, 512], 1),
    "16-256, 2 res units (0.12 recipe)": ([16, 32, 64, 128, 256], 2),
    "16-256, 1 res unit": ([16, 32, 64, 128, 256], 1),
}


def _step(channels: list[int], res_units: int, size: int, batch: int):
    torch.manual_seed(0)
    net = UNet(2, 1, 3, channels, [2] * (len(channels) - 1), num_res_units=res_units)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    loss = DiceCELoss(to_onehot_y=True, softmax=True)
    image = torch.randn(batch, 1, size, size)
    label = torch.randint(0, 3, (batch, 1, size, size))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss(net(image), label).backward()
        opt.step()

    return step, sum(p.numel() for p in net.parameters())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=1200, help="iterations of one recipe UNet")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device("cpu")
    env = measure.environment(device)
    variants, params = {}, {}
    for name, (channels, res_units) in WIDTHS.items():
        variants[name], params[name] = _step(channels, res_units, args.size, args.batch)
    print(f"{env['cpu']}, {env['torch_threads']} threads; {args.size} px, batch {args.batch}", flush=True)
    result = measure.measure(variants, args.repeats, device)
    lines = [
        f"# Segmentation UNet budget ({args.size} px, batch {args.batch})",
        "",
        f"CPU: {env['cpu']} ({env['torch_threads']} threads, {env['cpu_capability']}); torch {env['torch']}, "
        f"MONAI {env['monai']}; {args.repeats} alternating repeats, median; load average at start "
        f"{env['load_average_start']}.",
        "",
        f"| UNet | parameters (M) | s an iteration | speed vs the first | min for {args.iterations} iterations |",
        "|---|---|---|---|---|",
    ]
    for name, res in result.items():
        seconds = res["wall_s"]["median"]
        lines.append(
            f"| {name} | {params[name] / 1e6:.2f} | {seconds:.3f} | {res['speedup']['median']:.2f}x "
            f"[{res['speedup']['min']:.2f}, {res['speedup']['max']:.2f}] | {seconds * args.iterations / 60:.1f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    out = args.out or Path(__file__).resolve().parent / "results" / measure.machine_kind(env)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "unet_budget.md.tmp"
    tmp.write_text(text)
    tmp.replace(out / "unet_budget.md")
    print(f"wrote {out / 'unet_budget.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
