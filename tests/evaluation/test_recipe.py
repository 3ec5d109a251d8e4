"""The real-data recipe (``medseg.yaml``, run id ``recipe``): one command, every step, one report.

The end-to-end test runs the whole recipe at tiny scale (64 px, one epoch, small networks) on a subset of the
real MedSeg slices with the dataset's own train/test split, through the same bundle command a user types.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from covid_ct_cgan.evaluation import segmentation as seg
from covid_ct_cgan.evaluation.image_quality import csv_text
from covid_ct_cgan.evaluation.recipe import choose_b_ratio, paired_difference, write_recipe_report
from covid_ct_cgan.errors import InputError
from covid_ct_cgan.settings import run_bundle

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS = REPO_ROOT / "bundle" / "configs"
MEDSEG = REPO_ROOT.parent / "shared" / "data" / "medseg-slices"
TRAIN, TEST = 8, 4  # slices taken from the dataset's train/ and test/


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_paired_difference_matches_slices_and_refuses_other_test_sets() -> None:
    base = [{"name": f"s{k}", "patient": f"s{k}", "dice_infection": str(v)} for k, v in enumerate([0.5, 0.6, 0.7, "nan"])]
    other = [{"name": f"s{k}", "patient": f"s{k}", "dice_infection": str(v)} for k, v in enumerate([0.6, 0.6, 0.9, 0.2])][::-1]
    diff = paired_difference(base, other, "dice_infection", n_boot=200)
    assert diff["slices"] == 3  # the slice without a value in the base run is left out
    assert math.isclose(diff["mean"], 100 * np.mean([0.1, 0.0, 0.2]))
    assert diff["low"] <= diff["mean"] <= diff["high"]
    with pytest.raises(InputError, match="different test slices"):
        paired_difference(base, other[:2], "dice_infection")


def _slice_rows(run: str, experiment: str, ratio: float, shift: float, noise: float, rng: np.random.Generator) -> list[dict]:
    """12 test slices of 4 patients x seeds 0-2; Dice = a slice's own level + ``shift`` + seed-and-slice noise."""
    rows = []
    for s in range(3):
        for i in range(12):
            row = {"run": run, "experiment": experiment, "ratio": ratio, "seed": s, "name": f"images/p{i // 3}_{i}.nii.gz",
                   "patient": f"p{i // 3}", "slice": i}
            for c in seg.CLASSES:
                level = 0.3 + 0.03 * i
                dice = "nan" if (c == "consolidation" and i % 4 == 0) else float(np.clip(level + shift + rng.normal(0, noise), 0, 1))
                row.update({f"dice_{c}": dice, f"tp_{c}": 50, f"fp_{c}": 10, f"tn_{c}": 900, f"fn_{c}": 20})
            rows.append(row)
    return rows


def _write_results(folder: Path, rows: list[dict]) -> None:
    folder.mkdir(parents=True)
    summary = [dict(r, train_real=45, train_synthetic=0 if r["run"] == "real_only" else 23)
               for r in seg.summarise(rows, num_folds=4, n_boot=100)]
    (folder / "summary.csv").write_text(csv_text(summary, seg.SUMMARY_COLUMNS))
    (folder / "slices.csv").write_text(csv_text(rows, seg.SLICE_COLUMNS))


def test_paired_difference_pairs_slices_and_seeds() -> None:
    rng = np.random.default_rng(0)
    base = _slice_rows("real_only", "A+B", 0.0, 0.0, 0.05, rng)
    gain = [dict(r, run="B_50", dice_infection=r["dice_infection"] + 0.04) for r in base]  # the same slice and seed
    diff = paired_difference(base, gain[::-1], "dice_infection", n_boot=300)
    assert diff["mean"] == pytest.approx(4.0) and diff["low"] == pytest.approx(4.0) and diff["high"] == pytest.approx(4.0)
    assert (diff["slices"], diff["clusters"], diff["seeds"]) == (12, 4, "0 1 2")
    noisy = _slice_rows("B_50", "B", 0.5, 0.0, 0.05, rng)
    diff = paired_difference(base, noisy, "dice_infection", n_boot=300)
    assert diff["low"] < 0.0 < diff["high"]  # no gain: the interval holds zero
    two = paired_difference(base, [r for r in noisy if r["seed"] != 2], "dice_infection", n_boot=300)
    assert two["seeds"] == "0 1"  # only the seeds of both runs are paired
    with pytest.raises(InputError, match="share no training seed"):
        paired_difference(base, [dict(r, seed=7) for r in noisy], "dice_infection")
    with pytest.raises(InputError, match="different test slices"):
        paired_difference(base, [r for r in noisy if r["slice"] != 3], "dice_infection")


def test_report_lists_every_seed_and_judges_b_by_its_paired_interval(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    work = tmp_path / "work"
    real = _slice_rows("real_only", "A+B", 0.0, 0.0, 0.04, rng)
    _write_results(work / "segmentation" / "results",
                   real + _slice_rows("A_50", "A", 0.5, -0.01, 0.04, rng) + _slice_rows("B_50", "B", 0.5, 0.08, 0.04, rng))
    # lesion inpainting: half the patients 5 points better, half 5 points worse than real only, every seed
    sign = {"p0": 1, "p1": -1, "p2": 1, "p3": -1}
    swing = [dict(r, run="B_50", experiment="B", ratio=0.5,
                  **{f"dice_{c}": r[f"dice_{c}"] if r[f"dice_{c}"] == "nan" else r[f"dice_{c}"] + 0.05 * sign[r["patient"]]
                     for c in seg.CLASSES}) for r in real]
    _write_results(work / "segmentation_lesion_inpainting" / "results", swing)
    report = write_recipe_report(work, tmp_path / "inpainting", 0.5)
    seg_rows = _rows(report / "segmentation.csv")
    assert [(r["run"], r["generator"], r["seeds"]) for r in seg_rows] == [
        ("real slices only", "-", "0 1 2"), ("A: 50 % replaced", "map-only", "0 1 2"),
        ("B: 50 % added", "map-only", "0 1 2"), ("B: 50 % added", "lesion inpainting", "0 1 2")]
    b_map, b_inp = seg_rows[2], seg_rows[3]
    for cls in ("infection", "ggo", "consolidation"):
        assert 0.0 < float(b_map[f"{cls}_diff_low"]) < float(b_map[f"{cls}_diff"]) < float(b_map[f"{cls}_diff_high"])
        assert float(b_inp[f"{cls}_diff_low"]) < 0.0 < float(b_inp[f"{cls}_diff_high"])
    assert b_map["paired_seeds"] == "0 1 2" and b_map["paired_slices"] == "12"
    per_seed = _rows(report / "segmentation_seeds.csv")
    assert len(per_seed) == 4 * 3 and {r["seed"] for r in per_seed} == {"0", "1", "2"}
    targets = [t for t in _rows(report / "targets.csv") if t["target"].startswith("B (")]
    assert [t["met"] for t in targets] == ["yes", "no"]  # map-only gains, lesion inpainting is noise
    assert all("slices x 3 seeds" in t["measured"] and "GGO" in t["measured"] and "consolidation" in t["measured"]
               for t in targets)
    text = (report / "report.md").read_text()
    assert "## Segmentation on the 12 test slices" in text  # not 12 x 3 seeds
    assert "### Every seed" in text and "### Paired difference from real only" in text


def test_report_judges_the_upsampling_grid_where_the_run_measured_it(tmp_path: Path) -> None:
    from covid_ct_cgan.evaluation.image_quality import SUMMARY_COLUMNS

    rng = np.random.default_rng(3)
    work = tmp_path / "work"
    _write_results(work / "segmentation" / "results", _slice_rows("real_only", "A+B", 0.0, 0.0, 0.04, rng))
    quality = work / "evaluation" / "image_quality"
    quality.mkdir(parents=True)
    common = {"region": "complemented", "psnr": 23.0, "ssim": 0.8, "fid": 0.1, "kid": 0.01, "vesselness_ratio": 0.9,
              "two_sample_accuracy": 0.6, "two_sample_low": 0.5, "two_sample_high": 0.7, "image_size": 512}
    rows = [dict(common, model="lesion_inpainting", realism_region="lesions", grid_peak=104.4, grid_peak_real=0.93),
            dict(common, model="ours", realism_region="lung", grid_peak=1.4, grid_peak_real=0.9)]
    (quality / "image_quality.csv").write_text(csv_text(rows, SUMMARY_COLUMNS))
    report = write_recipe_report(work, tmp_path / "inpainting", 0.5)
    grid = [t for t in _rows(report / "targets.csv") if "grid" in t["target"]]
    assert [(t["target"], t["measured"], t["met"]) for t in grid] == [
        ("lesion inpainting: no up-sampling grid, grid peak at most 2", "104.4 (its real slices: 0.9)", "no")]
    text = (report / "report.md").read_text()
    assert "| grid peak (real) |" in text and "| 104.4 (0.9) |" in text and "| 1.4 (0.9) |" in text
    # a run before the grid peak was measured: no column, no target
    (quality / "image_quality.csv").write_text(csv_text([{k: v for k, v in r.items() if "grid" not in k} for r in rows],
                                                        [c for c in SUMMARY_COLUMNS if "grid" not in c]))
    report = write_recipe_report(work, tmp_path / "inpainting", 0.5, overwrite=True)
    assert not [t for t in _rows(report / "targets.csv") if "grid" in t["target"]]
    assert "| grid peak (real) |" not in (report / "report.md").read_text()


def test_b_ratio_is_chosen_on_the_validation_results_and_reported(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    work = tmp_path / "work"
    choice = work / "segmentation_b_choice" / "results"
    real = _slice_rows("real_only", "B", 0.0, 0.0, 0.02, rng)
    _write_results(choice, real + _slice_rows("B_50", "B", 0.5, 0.02, 0.02, rng)
                   + _slice_rows("B_100", "B", 1.0, 0.06, 0.02, rng) + _slice_rows("B_200", "B", 2.0, 0.03, 0.02, rng))
    chosen, rows = choose_b_ratio(choice)
    assert chosen == 1.0  # the largest gain, not the most synthetic slices
    assert [r["ratio"] for r in rows] == [0.5, 1.0, 2.0] and [r["chosen"] for r in rows] == ["", "yes", ""]
    assert rows[1]["infection_diff"] > rows[0]["infection_diff"] and rows[1]["seeds"] == "0 1 2"
    # a tie goes to fewer synthetic slices
    tie = tmp_path / "tie"
    _write_results(tie, real + [dict(r, run=run, ratio=ratio) for run, ratio in (("B_200", 2.0), ("B_100", 1.0))
                                for r in _slice_rows("x", "B", 0.0, 0.0, 0.0, np.random.default_rng(5))])
    assert choose_b_ratio(tie)[0] == 1.0
    with pytest.raises(InputError, match="B-ratio choice"):
        choose_b_ratio(tmp_path / "none")
    # the report's B rows are those of the chosen ratio, and the choice is listed
    _write_results(work / "segmentation" / "results",
                   _slice_rows("real_only", "A+B", 0.0, 0.0, 0.04, rng) + _slice_rows("A_50", "A", 0.5, 0.0, 0.04, rng)
                   + _slice_rows("B_100", "B", 1.0, 0.05, 0.04, rng))
    report = write_recipe_report(work, tmp_path / "inpainting", 0.5)
    assert [r["run"] for r in _rows(report / "segmentation.csv")] == [
        "real slices only", "A: 50 % replaced", "B: 100 % added"]
    assert [r["chosen"] for r in _rows(report / "b_ratio_choice.csv")] == ["", "yes", ""]
    assert "### B's ratio, chosen on the validation slices" in (report / "report.md").read_text()


def _subset(root: Path) -> Path:
    """8 training and 4 test slices of MedSeg in the dataset's own train/ and test/ layout."""
    if not MEDSEG.is_dir():
        pytest.skip(f"the recipe test needs {MEDSEG} (the team's shared/ folder beside the repository)")
    for part, count in (("train", TRAIN), ("test", TEST)):
        stems = sorted(p.stem for p in (MEDSEG / part / "images").iterdir())[:count]
        for kind in ("images", "labels"):
            (root / part / kind).mkdir(parents=True)
            for stem in stems:
                src = next((MEDSEG / part / kind).glob(f"{stem}.*"))
                shutil.copyfile(src, root / part / kind / src.name)
    return root


@pytest.mark.integration
def test_recipe_runs_every_step_and_writes_the_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from covid_ct_cgan.engines import ConditionalGanTrainer

    built: list[tuple[int, float]] = []  # (epochs, lambda_fm) of every GAN stage the recipe trains
    real_init = ConditionalGanTrainer.__init__

    def recording_init(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        real_init(self, *args, **kwargs)
        built.append((self.state.max_epochs, self.lambda_fm))

    monkeypatch.setattr(ConditionalGanTrainer, "__init__", recording_init)
    raw, work = _subset(tmp_path / "raw"), tmp_path / "work"
    tiny = {"dataset_dir": str(raw), "work_dir": str(work), "image_size": 64, "crop_size": 32, "epochs": 1, "ngf": 8,
            "ndf": 8,
            "n_blocks_global": 1, "n_blocks_local": 1, "batch_size": 4,
            "recipe_segmentation#image_size": 64, "recipe_segmentation#epochs": 1,
            "recipe_segmentation#unet_channels": [4, 8, 16, 32, 64],
            "recipe_evaluation": {"fid#epochs": 1, "realism#iterations": 5, "realism#folds": 2}}
    files = [str(CONFIGS / "train.yaml"), str(CONFIGS / "medseg.yaml")]
    run_bundle("recipe", config_file=files, **tiny)
    # medseg.yaml's recipe_lesion_inpainting: feature matching at 1 in the lesion generator's joint stage (3 epochs) only
    assert sorted(built) == [(1, 10.0)] * 5 + [(3, 1.0)]

    # no test slice trained a generator or a segmenter (the dataset's own test/ folder is the test set)
    lists = json.loads((work / "data" / "datalist.json").read_text())
    train_images = {it["image"] for key in ("training", "validation") for it in lists[key]}
    assert len(train_images) == TRAIN
    assert len(lists["test_segmentation"]) == TEST and not train_images & {it["image"] for it in lists["test_segmentation"]}
    run_dirs = sorted((work / "segmentation" / "results" / "runs").glob("*/seed_*"))
    assert len(run_dirs) == 3 * 3  # real only, A and B, each with medseg.yaml's 3 seeds
    for run_dir in run_dirs:
        used = {Path(it["image"]).name for it in json.loads((run_dir / "training.json").read_text())["train_items"]
                if it["origin"] == "real"}
        assert used
        assert not used & {Path(it["image"]).name for it in lists["test_segmentation"]}

    report = work / "report"
    text = (report / "report.md").read_text()
    for heading in ("## Segmentation on the 4 test slices", "## Published results on the same test slices",
                    "## Realism on the test slices", "## Lesion inpainting: the discriminators' signal", "## Targets",
                    "## Time"):
        assert heading in text, heading
    assert "| Inf-Net | 68.2 |" in text
    seg = _rows(report / "segmentation.csv")
    assert [(r["run"], r["generator"]) for r in seg] == [
        ("real slices only", "-"), ("A: 50 % replaced", "map-only"), ("B: 50 % added", "map-only"),
        ("B: 50 % added", "lesion inpainting")]
    assert [r["train_synthetic"] for r in seg] == ["0", "4", "4", "4"]  # 7 training slices: round(0.5 * 7)
    for r in seg:
        assert 0.0 <= float(r["infection_dice"]) <= 100.0
        assert float(r["infection_boot_low"]) <= float(r["infection_dice"]) <= float(r["infection_boot_high"])
    assert all(math.isfinite(float(r["infection_diff"])) for r in seg[1:])
    realism = {r["model"] for r in _rows(work / "evaluation" / "image_quality" / "image_quality.csv")}
    assert realism == {"ours", "lesion_inpainting", "mean_lung", "resampled_real"}
    targets = _rows(report / "targets.csv")
    assert len(targets) == 9 and {t["met"] for t in targets} <= {"yes", "no"}
    assert {"lesion inpainting: vesselness ratio within 0.85-1.15", "lesion inpainting: two-sample accuracy at most 0.62",
            "lesion inpainting: no up-sampling grid, grid peak at most 2",
            "map-only: vesselness ratio at least 0.8", "map-only: two-sample accuracy at most 0.7"} <= {t["target"] for t in targets}
    grid = next(t for t in targets if "grid" in t["target"])
    assert math.isfinite(float(grid["measured"].split()[0]))  # measured at the tiny recipe's 64-px slices too
    report_text = (report / "report.md").read_text()
    assert "| stage | epochs | D1 ranking | D2 ranking | local D ranking |" in report_text  # the critics' signal
    # the inpainting generator's local discriminator trained in every stage, its losses are kept
    for stage in ("global", "local", "joint"):
        means = _rows(work / "output_lesion_inpainting" / stage / "training.csv")
        assert math.isfinite(float(means[-1]["d_local"])) and math.isfinite(float(means[-1]["d_loss"]))
        assert all(0.0 <= float(means[-1][k]) <= 1.0 for k in ("d1_ranking", "d2_ranking", "local_d_ranking"))
        # medseg.yaml's recipe_lesion_inpainting: its joint stage trains three times the epochs; the map-only one does not
        assert len(means) == (3 if stage == "joint" else 1)
        assert len(_rows(work / "output" / stage / "training.csv")) == 1
        # both generators up-sample by resizing (medseg.yaml)
        saved = {name: json.loads((work / folder / stage / "settings.json").read_text())["networks"]["generator"]
                 for name, folder in (("lesion", "output_lesion_inpainting"), ("map", "output"))}
        assert (saved["lesion"]["upsampling"], saved["map"]["upsampling"]) == ("resize", "resize")
    assert (report / "model_grid.png").stat().st_size > 0 and (report / "discriminator_losses.png").stat().st_size > 0
    timings = json.loads((work / "recipe_timings.json").read_text())
    assert set(timings) == {"generator_map", "generator_lesion_inpainting", "image_quality", "segmentation_map",
                            "segmentation_lesion_inpainting", "evaluation_report"}

    # a second call keeps what exists (no step is redone) and rewrites only the report
    summary = work / "segmentation" / "results" / "summary.csv"
    before = summary.stat().st_mtime_ns
    run_bundle("recipe", config_file=files, **tiny)
    assert summary.stat().st_mtime_ns == before
    assert (report / "report.md").read_text().count("## Targets") == 1


@pytest.mark.parametrize("override, line", [
    ({"recipe_lesion_inpainting": {"epoch": 1}},
     "recipe_lesion_inpainting: unknown key 'epoch'; did you mean 'epochs'? (a key of lesion_inpainting.yaml)"),
    ({"recipe_evaluation": {"fid#epoch": 1}}, "recipe_evaluation: "),
    ({"recipe_models": ["ours", "mine"]}, "recipe_models: no entry ['mine'] in evaluate.yaml's models (entries: "),
])
def test_a_later_steps_bad_key_is_refused_before_the_first_step(tmp_path: Path, monkeypatch, capsys, override, line) -> None:
    """The steps after the generators' training (hours) read keys of other configs: checked before step 1."""
    from covid_ct_cgan.evaluation import recipe

    steps: list[tuple] = []
    monkeypatch.setattr(recipe, "run_bundle", lambda *a, **k: steps.append(a))
    files = [str(CONFIGS / "train.yaml"), str(CONFIGS / "medseg.yaml")]
    with pytest.raises(SystemExit) as stop:
        run_bundle("recipe", config_file=files, work_dir=str(tmp_path / "work"), **override)
    assert stop.value.code == 2 and steps == []
    [error] = [e for e in capsys.readouterr().err.splitlines() if e.startswith("ERROR")]
    assert error.startswith(f"ERROR: {line}")
    assert not (tmp_path / "work").exists()
