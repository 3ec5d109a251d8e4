"""Probe: does keeping the weights in bf16 take a training step past bf16 autocast?

A bare GAN step of the joint stage's paper networks (generator forward, both
discriminator passes of the D loss with backward, the generator's adversarial
pass with backward; no optimizer, no feature matching), batch 1, timed three
ways in one process, alternating: fp32, fp32 weights under bf16 autocast (what
``train.yaml`` does on a native-bf16 CPU), and weights and inputs in bf16 with no
autocast (no casts at all; a real trainer would also keep fp32 master weights,
which costs more). Prints the medians and the ratios to fp32.

    python benchmarks/probe_bf16_weights.py --image_size 256 --ngf 32

The answer for the AMX Xeon is in ``benchmarks/README.md`` (Training beyond autocast).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import environment, machine_kind, measure  # noqa: E402
from run import config_parser  # noqa: E402


def gan_step(generator: torch.nn.Module, discriminator: torch.nn.Module, condition: torch.Tensor,
             real: torch.Tensor, autocast: bool) -> None:
    """One least-squares GAN step's forward and backward passes (gradients accumulate; nothing is updated)."""
    with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        fake = generator(condition)
        on_real = discriminator(torch.cat([condition, real], 1))
        on_fake = discriminator(torch.cat([condition, fake.detach()], 1))
        d_loss = sum(((r[-1].float() - 1) ** 2).mean() + (f[-1].float() ** 2).mean() for r, f in zip(on_real, on_fake))
    d_loss.backward()
    with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        g_loss = sum(((f[-1].float() - 1) ** 2).mean() for f in discriminator(torch.cat([condition, fake], 1)))
    g_loss.backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image_size", type=int, default=256)
    parser.add_argument("--ngf", type=int, default=32)
    parser.add_argument("--pairs", type=int, default=4, help="timed calls of each variant, in alternating order")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = config_parser({"stage": "joint", "image_size": args.image_size, "ngf": args.ngf,
                            "device": torch.device("cpu")})
    generator, discriminator = config.get_parsed_content("network"), config.get_parsed_content("discriminator")
    channels = next(m for m in generator.modules() if isinstance(m, torch.nn.Conv2d)).in_channels
    condition = torch.randn(1, channels, args.image_size, args.image_size)
    real = torch.randn(1, 1, args.image_size, args.image_size)
    g16, d16 = copy.deepcopy(generator).bfloat16(), copy.deepcopy(discriminator).bfloat16()
    variants = {
        "fp32": lambda: gan_step(generator, discriminator, condition, real, False),
        "bf16 autocast": lambda: gan_step(generator, discriminator, condition, real, True),
        "bf16 weights": lambda: gan_step(g16, d16, condition.bfloat16(), real.bfloat16(), False),
    }
    results = measure(variants, args.pairs, torch.device("cpu"))
    print(f"{machine_kind(environment(torch.device('cpu')))}, {args.threads} threads, joint stage, "
          f"{args.image_size} px, ngf {args.ngf}, batch 1, {args.pairs} alternating calls, median (range)")
    for name, result in results.items():
        wall, speedup = result["wall_s"], result["speedup"]
        print(f"  {name:14s} {wall['median']:.3f} s a step  {speedup['median']:.2f}x fp32 "
              f"({speedup['min']:.2f}-{speedup['max']:.2f})")


if __name__ == "__main__":
    main()
