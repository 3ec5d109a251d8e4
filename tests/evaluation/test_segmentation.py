"""Segmentation experiments: targets and the class union, A/B ratio bookkeeping, statistics, a tiny end-to-end run."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from covid_ct_cgan.errors import InputError
from covid_ct_cgan.evaluation import segmentation as seg
from covid_ct_cgan.evaluation.statistics import fold_interval, patient_bootstrap, pooled_ratio

REPO = Path(__file__).resolve().parents[2]


def _real(n: int = 10) -> list[dict]:
    return [{"image": f"/data/images/p{i // 5}_{i:04d}.nii.gz", "label": f"/data/labels/{i}.nii.gz",
             "patient": f"p{i // 5}", "scale": "hu"} for i in range(n)]


def _synthetic(real: list[dict], variants: int = 1) -> list[dict]:
    return [{"image": f"/syn/images/{i}_v{v}.nii.gz", "label": f"/syn/labels/{i}_v{v}.nii.gz", "source": it["image"],
             "variant": v, "scale": "hu"} for i, it in enumerate(real) for v in range(variants + 1)]


def test_lesion_target_and_channels_make_infection_the_union() -> None:
    label = torch.tensor([[[0, 1, 2, 3, 4]]])
    assert seg.lesion_target(label).tolist() == [[[0, 0, 1, 2, 2]]]  # effusion counts as consolidation
    channels = seg.lesion_channels(torch.tensor([[[0, 1, 2, 1]]]))
    assert channels.shape == (3, 1, 4)
    assert channels[0].tolist() == [[0, 1, 0, 1]]  # GGO
    assert channels[1].tolist() == [[0, 0, 1, 0]]  # consolidation
    assert torch.equal(channels[2], torch.maximum(channels[0], channels[1]))  # infection = union


def test_experiment_a_replaces_a_nested_fraction_by_the_same_slices_synthetic_version() -> None:
    real, synthetic = _real(), _synthetic(_real())
    previous: set[str] = set()
    for ratio, expected in [(0.0, 0), (0.1, 1), (0.25, 3), (0.3, 3), (0.5, 5)]:  # round half up: 2.5 -> 3
        items = seg.experiment_datalist(real, synthetic, "A", ratio, seed=1)
        assert len(items) == len(real)  # the total is fixed
        swapped = [it for it in items if it["origin"] == "synthetic"]
        assert len(swapped) == expected
        for i, it in enumerate(items):  # position i still holds slice i, real or its own synthetic version
            assert it["source"] == real[i]["image"] and it["patient"] == real[i]["patient"]
        assert all("_v0" in it["image"] for it in swapped)  # the slice's own label map, not an augmented one
        sources = {it["source"] for it in swapped}
        assert previous <= sources  # a larger ratio replaces a superset
        previous = sources
        assert {tuple(sorted(it)) for it in items} == {tuple(sorted(items[0]))}  # same keys: they collate


def test_experiment_b_adds_augmented_slices_and_keeps_every_real_one() -> None:
    real, synthetic = _real(), _synthetic(_real(), variants=1)
    for ratio, expected in [(0.0, 0), (0.2, 2), (0.4, 4), (0.5, 5)]:
        items = seg.experiment_datalist(real, synthetic, "B", ratio, seed=0)
        assert [it["image"] for it in items[: len(real)]] == [it["image"] for it in real]
        extra = items[len(real):]
        assert len(extra) == expected and all(it["origin"] == "synthetic" and "_v1" in it["image"] for it in extra)
        assert len({it["image"] for it in extra}) == expected  # no slice twice
    with pytest.raises(InputError, match="synthetic_variants"):
        seg.experiment_datalist(real, synthetic, "B", 1.5)
    two = _synthetic(real, variants=2)  # two augmented maps per slice: B can add up to 2 N
    for ratio, expected in [(1.0, 10), (2.0, 20)]:
        extra = seg.experiment_datalist(real, two, "B", ratio)[len(real):]
        assert len({it["image"] for it in extra}) == expected and not any("_v0" in it["image"] for it in extra)
    with pytest.raises(InputError, match="variant 0"):
        seg.experiment_datalist(real, synthetic[2:], "A", 0.5)
    with pytest.raises(InputError, match="experiment must be"):
        seg.experiment_datalist(real, synthetic, "C", 0.1)


def test_ratio_zero_is_one_shared_run() -> None:
    plan = seg.run_names(["A", "B"], [0.0, 0.1, 0.5])
    assert [name for name, _, _ in plan] == ["real_only", "A_10", "A_50", "B_10", "B_50"]
    plan = seg.run_names(["A", "B"], [0.0, 0.5], b_ratios=[0.0, 1.0, 2.0])  # B beyond N added slices, A not
    assert plan == [("real_only", "A", 0.0), ("A_50", "A", 0.5), ("B_100", "B", 1.0), ("B_200", "B", 2.0)]


def test_summary_uses_folds_and_patient_bootstrap_on_the_slice_records() -> None:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(20):
        row = {"run": "A_10", "experiment": "A", "ratio": 0.1, "name": f"s{i}", "patient": f"p{i // 7}", "slice": i}
        for c in seg.CLASSES:
            tp, fp, fn = rng.integers(1, 50, 3)  # every slice holds every class
            row.update({f"dice_{c}": 2 * tp / (2 * tp + fp + fn), f"tp_{c}": tp, f"fp_{c}": fp, f"tn_{c}": 900, f"fn_{c}": fn})
        rows.append(row)
    summary = seg.summarise(rows, num_folds=10, n_boot=200, seed=0)
    assert len(summary) == 9  # 3 classes x (Dice, sensitivity, specificity)
    get = {(r["class"], r["metric"]): r for r in summary}
    dice = np.array([r["dice_ggo"] for r in rows])
    assert get[("ggo", "dice")]["mean"] == pytest.approx(100 * fold_interval(dice, k=10).mean)
    sens = np.array([[r["tp_infection"], r["fn_infection"]] for r in rows], dtype=float)
    expected = fold_interval(sens, pooled_ratio, k=10)
    assert get[("infection", "sensitivity")]["fold_half_width"] == pytest.approx(100 * expected.half_width)
    boot = patient_bootstrap(dice, [r["patient"] for r in rows], n_boot=200, seed=0)
    assert (get[("ggo", "dice")]["boot_low"], get[("ggo", "dice")]["boot_high"]) == pytest.approx((100 * boot.low, 100 * boot.high))
    assert get[("ggo", "dice")]["patients"] == 3


def _fake_synthesis(datalist: Path, out: Path) -> Path:
    """A synthesis folder whose 'synthetic' slices are copies of the real test_synthesis ones (variants 0 and 1)."""
    data = json.loads(datalist.read_text())
    (out / "images").mkdir(parents=True)
    (out / "labels").mkdir()
    items = []
    for it in data["test_synthesis"]:
        name = Path(it["image"]).name.split(".")[0]
        for v in (0, 1):
            shutil.copyfile(datalist.parent / it["image"], out / "images" / f"{name}_v{v}.nii.gz")
            shutil.copyfile(datalist.parent / it["label"], out / "labels" / f"{name}_v{v}.nii.gz")
            items.append({"image": f"images/{name}_v{v}.nii.gz", "label": f"labels/{name}_v{v}.nii.gz",
                          "source": str(datalist.parent / it["image"]), "variant": v, "scale": "hu"})
    (out / "datalist.json").write_text(json.dumps({"synthetic": items}))
    return out / "datalist.json"


def _tiny_config() -> dict:
    from monai.bundle import ConfigParser

    raw = ConfigParser.load_config_files(str(REPO / "bundle" / "configs" / "segmentation.yaml"))
    raw.update({"epochs": 1, "image_size": 32, "batch_size": 2, "device": "$torch.device('cpu')", "amp": False})
    return raw


def test_tiny_experiments_end_to_end(dataset: Path, tmp_path: Path) -> None:
    synthetic = _fake_synthesis(dataset, tmp_path / "synthetic")
    raw = _tiny_config()
    raw.update({"datalist": str(dataset)})
    out = tmp_path / "seg"
    rows = seg.run_experiments(
        out, dataset, experiments=["A", "B"], ratios=[0.0, 0.5], synthetic_datalist=synthetic, n_boot=50, config=raw,
    )
    results = out / "results"
    assert sorted(p.name for p in (results / "runs").iterdir()) == ["A_50", "B_50", "real_only"]
    for run in ("A_50", "B_50", "real_only"):  # SupervisedTrainer checkpoint and MetricsSaver reports, one seed
        assert [p.name for p in (results / "runs" / run).iterdir()] == ["seed_0"]
        assert {"unet.pt", "metrics.csv", "test_dice_raw.csv", "slices.csv", "training.json"} <= {
            p.name for p in (results / "runs" / run / "seed_0").iterdir()}
    sizes = {r: json.loads((results / "runs" / r / "seed_0" / "training.json").read_text()) for r in ("A_50", "B_50")}
    assert (sizes["A_50"]["train_real"], sizes["A_50"]["train_synthetic"]) == (1, 2)  # 3 real, round(1.5) = 2
    assert (sizes["B_50"]["train_real"], sizes["B_50"]["train_synthetic"]) == (3, 2)
    # 2 experiments x 2 ratios x 3 classes x 3 metrics; ratio 0 listed under both experiments
    assert len(rows) == 36
    assert {(r["experiment"], r["ratio"]) for r in rows} == {("A", 0.0), ("A", 0.5), ("B", 0.0), ("B", 0.5)}
    assert all(r["test_slices"] == 6 and r["patients"] == 2 for r in rows)
    assert all(r["image_size"] == "32" and r["epochs"] == "1" for r in rows)
    with open(results / "slices.csv", newline="") as f:
        slices = list(csv.DictReader(f))
    assert len(slices) == 18
    for s in slices:  # infection is the union of the arg-max classes, counted on its own
        tp = {c: int(s[f"tp_{c}"]) for c in seg.CLASSES}
        assert tp["infection"] >= tp["ggo"] + tp["consolidation"]
        total = sum(int(s[f"{k}_infection"]) for k in seg.COUNTS)
        assert total == 32 * 32
        denominator = 2 * tp["infection"] + int(s["fp_infection"]) + int(s["fn_infection"])
        assert float(s["dice_infection"]) == pytest.approx(2 * tp["infection"] / denominator, abs=1e-5)
    with pytest.raises(InputError, match="overwrite"):  # results exist and overwrite is false
        seg.run_experiments(out, dataset, experiments=["A"], ratios=[0.0], config=raw)


def test_infection_free_test_slices_measure_false_positives(tmp_path: Path, dataset_factory) -> None:
    dataset = dataset_factory(tmp_path / "data", infection_free=True)
    assert len(seg.test_datalist(dataset, include_infection_free=False)) == 5
    items = seg.test_datalist(dataset, include_infection_free=True)
    assert len(items) == 6 and items[0]["name"] == "images/p2_0000.nii.gz"
    raw = _tiny_config()
    raw.update({"datalist": str(dataset), "include_infection_free": True})
    rows = seg.run_experiments(tmp_path / "seg", dataset, experiments=["A"], ratios=[0.0],
                                           include_infection_free=True, n_boot=20, config=raw)
    fp = [r for r in rows if r["metric"] == "fp_slice_rate"]
    assert len(fp) == 1 and fp[0]["class"] == "infection" and 0.0 <= fp[0]["estimate"] <= 100.0


def test_training_on_the_test_slices_is_refused(dataset: Path, tmp_path: Path) -> None:
    # split: predefined writes the dataset's test/ folder into both test lists
    lists = json.loads(dataset.read_text())
    lists["test_synthesis"] = lists["test_segmentation"]
    leaky = dataset.parent / "leaky.json"
    leaky.write_text(json.dumps(lists))
    n = len(lists["test_segmentation"])
    with pytest.raises(InputError, match=rf"share {n} slice\(s\).*use --train_key training"):
        seg.check_disjoint(leaky, "test_synthesis", "test_segmentation")
    seg.check_disjoint(leaky, "training", "test_segmentation")  # disjoint lists pass
    with pytest.raises(InputError, match=rf"share {n} slice\(s\)"):
        seg.run_experiments(tmp_path / "seg", leaky, experiments=["A"], ratios=[0.0], config=_tiny_config())
    assert not (tmp_path / "seg" / "results").exists()


def test_summary_of_several_seeds_scores_their_mean_per_slice() -> None:
    rows = []
    for s, shift in ((0, 0.0), (1, 0.2)):
        for i in range(6):
            row = {"run": "B_50", "experiment": "B", "ratio": 0.5, "seed": s, "name": f"s{i}", "patient": f"p{i // 2}"}
            for c in seg.CLASSES:
                dice = "nan" if (c == "consolidation" and i == 0) else 0.4 + 0.05 * i + shift
                row.update({f"dice_{c}": dice, f"tp_{c}": 10 + s, f"fp_{c}": 2, f"tn_{c}": 100, f"fn_{c}": 5 - s})
            rows.append(row)
    summary = seg.summarise(rows, num_folds=3, n_boot=50)
    get = {(r["class"], r["metric"]): r for r in summary}
    assert get[("ggo", "dice")]["seeds"] == "0 1" and get[("ggo", "dice")]["test_slices"] == 6
    per_slice = np.array([0.5 + 0.05 * i for i in range(6)])  # the seeds' mean of each slice
    assert get[("ggo", "dice")]["estimate"] == pytest.approx(100 * per_slice.mean())
    assert get[("consolidation", "dice")]["estimate"] == pytest.approx(100 * per_slice[1:].mean())
    assert get[("infection", "sensitivity")]["estimate"] == pytest.approx(100 * 21 / (21 + 9))  # pixels of both seeds
    scores = {(r["seed"], r["class"], r["metric"]): r["value"] for r in seg.seed_scores(rows)}
    assert scores[("0", "ggo", "dice")] == pytest.approx(100 * (per_slice.mean() - 0.1))
    assert scores[("1", "ggo", "dice")] == pytest.approx(100 * (per_slice.mean() + 0.1))
    assert scores[("1", "infection", "sensitivity")] == pytest.approx(100 * 11 / 15)
    with pytest.raises(InputError, match="different test slices"):
        seg.summarise(rows[:-1], num_folds=3, n_boot=10)


def test_seed_list_defaults_to_the_seed_and_refuses_bad_seeds() -> None:
    assert seg.seed_list(None, 3) == [3] and seg.seed_list([], 2) == [2] and seg.seed_list([0, 1, 2]) == [0, 1, 2]
    for bad in ([0, 0], [-1], [1.5], ["x"], [True]):
        with pytest.raises(InputError, match="seeds must"):
            seg.seed_list(bad)


def test_more_seeds_resume_and_keep_the_earlier_ones(dataset: Path, tmp_path: Path) -> None:
    raw = _tiny_config()
    raw.update({"datalist": str(dataset)})
    out = tmp_path / "seg"
    run = seg.run_experiments
    run(out, dataset, experiments=["A"], ratios=[0.0], n_boot=20, config=raw, seeds=[0])
    results = out / "results"
    first = results / "runs" / "real_only" / "seed_0" / "unet.pt"
    before = (first.stat().st_ino, first.stat().st_mtime_ns)
    rows = run(out, dataset, experiments=["A"], ratios=[0.0], n_boot=20, config=raw, seeds=[0, 1])
    assert sorted(p.name for p in (results / "runs" / "real_only").iterdir()) == ["seed_0", "seed_1"]
    assert (first.stat().st_ino, first.stat().st_mtime_ns) == before  # seed 0 was not trained again
    weights = [next(iter(torch.load(results / "runs" / "real_only" / f"seed_{s}" / "unet.pt").values())) for s in (0, 1)]
    assert not torch.equal(*weights)  # each seed its own UNet
    assert json.loads((results / "settings.json").read_text())["seeds"] == [0, 1]
    assert {r["seeds"] for r in rows} == {"0 1"}
    slices = seg.read_csv(results / "slices.csv")
    assert sorted({r["seed"] for r in slices}) == ["0", "1"] and len(slices) == 2 * 6
    assert {r["seed"] for r in seg.read_csv(results / "seeds.csv")} == {"0", "1"}
    # every seed there already: nothing is trained, the results are kept
    mtime = (results / "summary.csv").stat().st_mtime_ns
    kept = run(out, dataset, experiments=["A"], ratios=[0.0], n_boot=20, config=raw, seeds=[1])
    assert (results / "summary.csv").stat().st_mtime_ns == mtime and len(kept) == len(rows)
    # other settings are refused without overwrite
    with pytest.raises(InputError):
        seg.run_experiments(out, dataset, experiments=["A"], ratios=[0.0], num_folds=5, config=dict(raw, epochs=2),
                            seeds=[2])
    assert not (results / "runs" / "real_only" / "seed_2").exists()
