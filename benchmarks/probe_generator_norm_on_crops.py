"""Probe: does the generator's instance norm draw a region differently on the whole slice than on a training crop?

A generator trained with ``crop_size`` saw only ``crop_size`` crops centred on lung and lesions; synthesis runs
it on the whole padded slice, where every instance norm standardises its channels over a larger, air-heavy
field. For each validation slice this draws the region three ways with the same weights:

* ``whole``: the whole padded slice (what synthesis does);
* ``crop``: a ``crop_size`` window centred on the region (what training saw);
* ``sliding``: ``crop_size`` windows as synthesis runs them (:func:`covid_ct_cgan.networks.windows.generate`).

and prints, inside the region, the mean and mean absolute difference of ``whole`` and ``sliding`` from ``crop``
in Hounsfield units (the model's [-1, 1] is the 1500-HU lung window) and the region's texture energy (standard
deviation of the Laplacian) of each, against the real slice's. Run after training a stage with ``crop_size``::

    python benchmarks/probe_generator_norm_on_crops.py --config_file "['bundle/configs/train.yaml',...]" \\
        --work_dir /tmp/native --image_size 512 --crop_size 256
"""

from __future__ import annotations

import argparse
import ast
import platform
import sys

import numpy as np
import torch
from monai.bundle import ConfigParser
from scipy import ndimage

from covid_ct_cgan.networks.windows import generate

HU_PER_UNIT = 750.0  # [-1, 1] spans the 1500-HU window


def _laplacian_energy(image: np.ndarray, region: np.ndarray) -> float:
    return float(ndimage.laplace(image.astype(np.float64))[region].std())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config_file", required=True, help="the training run's config files (a Python list)")
    parser.add_argument("--work_dir", required=True)
    parser.add_argument("--image_size", type=int, required=True)
    parser.add_argument("--crop_size", type=int, required=True)
    parser.add_argument("--checkpoint", default="", help="default: <output_dir>/joint/best_generator.pt")
    args = parser.parse_args()

    config = ConfigParser()
    config.read_config(ast.literal_eval(args.config_file))
    config.update({"work_dir": args.work_dir, "image_size": args.image_size, "crop_size": args.crop_size,
                   "stage": "joint", "device": "$torch.device('cpu')"})
    network = config.get_parsed_content("network_def")
    checkpoint = args.checkpoint or f"{config.get_parsed_content('output_dir')}/joint/best_generator.pt"
    network.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["generator"])
    network.eval()
    dataset = config.get_parsed_content("validate#dataset")
    composite = config.get_parsed_content("condition") == "map+context"
    size = args.crop_size
    print(f"# generator instance norm: whole slice vs {size}-px crops ({platform.processor() or platform.machine()})")
    print(f"checkpoint {checkpoint}, {len(dataset)} validation slices, grid {args.image_size} px\n")
    print("| slice | region px | whole - crop mean (HU) | abs (HU) | sliding - crop abs (HU) | "
          "bias from real: crop / whole / sliding (HU) | texture real / crop / whole / sliding |")
    print("|---|---|---|---|---|---|---|")
    shifts, whole_abs, sliding_abs, biases = [], [], [], []
    for i in range(len(dataset)):
        item = dataset[i]
        cond, real, region = (torch.as_tensor(item[k]).float()[None] for k in ("condition", "image", "region"))
        mask = region[0, 0].numpy() > 0.5
        if not mask.any():
            continue
        ys, xs = np.nonzero(mask)
        top = int(np.clip((ys.min() + ys.max()) // 2 - size // 2, 0, args.image_size - size))
        left = int(np.clip((xs.min() + xs.max()) // 2 - size // 2, 0, args.image_size - size))
        window = (slice(top, top + size), slice(left, left + size))
        with torch.no_grad():
            whole = network(cond)[0, 0].numpy()
            crop = network(cond[..., window[0], window[1]])[0, 0].numpy()
            sliding = generate(network, cond, size, batch_size=4)[0, 0].numpy()  # what synthesis runs
        inside = mask[window]
        if not inside.any():
            continue
        diff_whole = (whole[window] - crop)[inside] * HU_PER_UNIT
        diff_sliding = (sliding[window] - crop)[inside] * HU_PER_UNIT
        shifts.append(float(diff_whole.mean()))
        whole_abs.append(float(np.abs(diff_whole).mean()))
        sliding_abs.append(float(np.abs(diff_sliding).mean()))
        r = real[0, 0].numpy()
        truth = r[window][inside]
        bias = [float((v[inside] - truth).mean() * HU_PER_UNIT) for v in (crop, whole[window], sliding[window])]
        biases.append(bias)
        if composite:
            whole, sliding = np.where(mask, whole, r), np.where(mask, sliding, r)
            crop = np.where(inside, crop, r[window])
        energies = [_laplacian_energy(r[window], inside), _laplacian_energy(crop, inside),
                    _laplacian_energy(whole[window], inside), _laplacian_energy(sliding[window], inside)]
        print(f"| {i} | {int(inside.sum())} | {shifts[-1]:+.1f} | {whole_abs[-1]:.1f} | {sliding_abs[-1]:.1f} | "
              + " / ".join(f"{b:+.0f}" for b in bias) + " | " + " / ".join(f"{e:.3f}" for e in energies) + " |")
    if not shifts:
        print("no validation slice has a region to compare")
        return 1
    print(f"\nmean over slices: whole - crop {np.mean(shifts):+.1f} HU (abs {np.mean(whole_abs):.1f} HU); "
          f"sliding windows - crop abs {np.mean(sliding_abs):.1f} HU; mean bias from the real region: crop / whole / "
          f"sliding " + " / ".join(f"{b:+.1f}" for b in np.mean(biases, axis=0)) + " HU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
