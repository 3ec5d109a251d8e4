"""``compile: auto`` and ``cpu_pixels_per_call: auto`` follow the probes; the probe cache is atomic, reused, re-probed
when corrupt. Probe results are injected: no test depends on timing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from covid_ct_cgan.inference import run_synthesis, synthesis, tuning
from covid_ct_cgan.inference.tuning import ProbeCache, choose

from conftest import IMAGE_SIZE, make_generator

CPU = torch.device("cpu")
BATCH = 4


class Probes:
    """Injected probes that count their calls."""

    def __init__(self, samples: int = 2, break_even: int | None = 100, seconds_per_slice: float = 10.0) -> None:
        self.samples, self.break_even, self.seconds_per_slice = samples, break_even, seconds_per_slice
        self.calls = {"slicing": 0, "compile": 0}

    def slicing(self, *args, **kwargs) -> dict:
        self.calls["slicing"] += 1
        return {"samples_per_call": self.samples, "seconds_per_slice": {str(self.samples): self.seconds_per_slice}}

    def compile(self, *args, **kwargs) -> dict:
        self.calls["compile"] += 1
        return {"break_even_slices": self.break_even, "warm_startup_s": 1.0}


def _choose(probes: Probes, slices: int, cache: ProbeCache, compile="auto", pixels="auto") -> tuning.Choice:
    return choose(make_generator(), CPU, IMAGE_SIZE, BATCH, False, compile, pixels, slices, 2**17,
                  compile_fn=lambda net: net, cache=cache, slicing_probe=probes.slicing, compile_probe=probes.compile)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ProbeCache:
    monkeypatch.setenv(tuning.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(tuning.INDUCTOR_ENV, "")  # unset for use_inductor_cache; restored after the test
    return ProbeCache()


def test_cache_folder_from_the_environment(cache: ProbeCache, tmp_path: Path) -> None:
    assert cache.path == tmp_path / "cache" / tuning.PROBE_FILE
    assert tuning.use_inductor_cache() == tmp_path / "cache" / "inductor"
    assert os.environ[tuning.INDUCTOR_ENV] == str(tmp_path / "cache" / "inductor")


def test_an_inductor_cache_set_by_the_user_is_kept(cache: ProbeCache, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(tuning.INDUCTOR_ENV, str(tmp_path / "mine"))
    assert tuning.use_inductor_cache() == tmp_path / "mine"


@pytest.mark.parametrize("break_even, slices, compiled", [(100, 101, True), (100, 100, False), (None, 10**6, False),
                                                          (3, 16, True)])
def test_compile_auto_follows_the_break_even(cache: ProbeCache, break_even, slices, compiled) -> None:
    choice = _choose(Probes(break_even=break_even), slices, cache)
    assert choice.compile is compiled
    assert ("never" in choice.reason) is (break_even is None)


@pytest.mark.parametrize("samples, pixels", [(1, IMAGE_SIZE**2), (2, 2 * IMAGE_SIZE**2), (BATCH, None)])
def test_slicing_follows_the_probe(cache: ProbeCache, samples: int, pixels: int | None) -> None:
    assert _choose(Probes(samples=samples), 64, cache).cpu_pixels_per_call == pixels


def test_explicit_settings_are_not_probed(cache: ProbeCache) -> None:
    probes = Probes()
    for compile in (True, False):
        choice = _choose(probes, 10**4, cache, compile=compile, pixels=1234)
        assert choice.compile is compile and choice.cpu_pixels_per_call == 1234
    assert probes.calls == {"slicing": 0, "compile": 0} and not cache.path.exists()


def test_small_runs_are_not_probed_and_stay_eager(cache: ProbeCache) -> None:
    probes = Probes(break_even=0)
    choice = _choose(probes, tuning.PROBE_MIN_BATCHES * BATCH - 1, cache)
    assert choice.compile is False and choice.cpu_pixels_per_call == 2**17
    assert probes.calls == {"slicing": 0, "compile": 0}


def test_results_are_cached_atomically_and_reused(cache: ProbeCache, monkeypatch: pytest.MonkeyPatch) -> None:
    probes = Probes(samples=1, break_even=50)
    written: list[Path] = []
    real_write = tuning.write_json

    def spy(obj, path, overwrite=False):
        written.append(Path(path))
        return real_write(obj, path, overwrite)

    monkeypatch.setattr(tuning, "write_json", spy)  # the fileio writer: a temporary file renamed into place
    first = _choose(probes, 64, cache)
    assert written == [cache.path, cache.path]
    assert sorted(p.name for p in cache.path.parent.iterdir()) == [tuning.PROBE_FILE]  # no temporary left
    data = json.loads(cache.path.read_text())
    assert data["version"] == tuning.PROBE_VERSION
    (workloads,) = data["entries"].values()
    (probes_done,) = workloads.values()
    assert set(probes_done) == {"slicing", "compile"}
    # a second run (another process reads the same file) reuses the results, even for a small run
    again = _choose(Probes(samples=4, break_even=1), 8, ProbeCache())
    assert probes.calls == {"slicing": 1, "compile": 1}
    assert again == tuning.Choice(False, IMAGE_SIZE**2, again.reason) and "probe cache" in again.reason
    assert first.compile is True and first.cpu_pixels_per_call == IMAGE_SIZE**2


def test_entries_are_per_machine_and_workload(cache: ProbeCache, monkeypatch: pytest.MonkeyPatch) -> None:
    probes = Probes()
    _choose(probes, 64, cache)
    monkeypatch.setattr(tuning, "machine_key", lambda: "another CPU | flags x | torch 0 | threads 1")
    _choose(probes, 64, cache)
    assert probes.calls == {"slicing": 2, "compile": 2}
    assert len(json.loads(cache.path.read_text())["entries"]) == 2


@pytest.mark.parametrize("content", ["{not json", json.dumps({"version": 0, "entries": {}}), json.dumps([1, 2]),
                                     "\udcff"])
def test_a_corrupt_cache_is_probed_again(cache: ProbeCache, content: str, caplog) -> None:
    cache.path.parent.mkdir(parents=True)
    cache.path.write_bytes(content.encode("utf-8", "surrogateescape"))
    probes = Probes(samples=1)
    with caplog.at_level("WARNING"):
        choice = _choose(probes, 64, cache)
    assert probes.calls == {"slicing": 1, "compile": 1} and choice.cpu_pixels_per_call == IMAGE_SIZE**2
    assert "ignoring the probe cache" in caplog.text
    assert json.loads(cache.path.read_text())["version"] == tuning.PROBE_VERSION  # replaced by a good one


def test_machine_key_names_cpu_flags_torch_and_threads() -> None:
    key = tuning.machine_key()
    assert f"torch {torch.__version__}" in key and f"threads {torch.get_num_threads()}" in key and "flags " in key


@pytest.mark.integration
def test_real_probes_return_their_documented_fields() -> None:
    net = make_generator()
    sliced = tuning.probe_slicing(net, CPU, IMAGE_SIZE, 3, False)
    assert set(sliced["seconds_per_slice"]) == {"1", "2", "3"} and sliced["samples_per_call"] in (1, 2, 3)
    compiled = tuning.probe_compile(net, CPU, IMAGE_SIZE, 2, False, lambda n: torch.compile(n, backend="eager"))
    assert set(compiled) == {"eager_s_per_slice", "compiled_s_per_slice", "cold_startup_s", "warm_startup_s",
                             "break_even_slices"}
    even = compiled["break_even_slices"]
    assert even is None or even >= 1


def test_a_failing_compiler_means_never(cache: ProbeCache) -> None:
    def broken(net):
        raise RuntimeError("no C compiler")

    result = tuning.probe_compile(make_generator(), CPU, IMAGE_SIZE, 2, False, broken)
    assert result["break_even_slices"] is None and result["error"] == "RuntimeError: no C compiler"
    choice = choose(make_generator(), CPU, IMAGE_SIZE, BATCH, False, "auto", None, 10**6, 2**17, compile_fn=broken,
                    cache=cache, slicing_probe=Probes().slicing)
    assert choice.compile is False and "never" in choice.reason


def test_run_synthesis_resolves_auto(cache: ProbeCache, tmp_path: Path, builders, checkpoint_dir: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    probes = Probes(samples=1, break_even=1)
    monkeypatch.setattr(tuning, "probe_slicing", probes.slicing)
    monkeypatch.setattr(tuning, "probe_compile", probes.compile)
    monkeypatch.setattr(tuning, "PROBE_MIN_BATCHES", 1)
    monkeypatch.setattr(tuning, "COMPILE_PROBE_MIN_S", 0.0)  # a 2-slice run is probed here
    monkeypatch.setattr(synthesis, "COMPILE_BACKEND", "eager")
    hu, label = builders.tiny_volume(nz=3)
    image = builders.save_nifti(hu, tmp_path / "in" / "v.nii.gz")
    lab = builders.save_nifti(label, tmp_path / "in" / "v_label.nii.gz")
    run_synthesis(make_generator(), checkpoint_dir / "joint", tmp_path / "out", image=image,
                                        label=lab, image_size=IMAGE_SIZE, batch_size=1, compile="auto",
                                        cpu_pixels_per_call="auto")
    settings = json.loads((tmp_path / "out" / "settings.json").read_text())
    assert settings["compile"] == "auto" and settings["compiled"] is True  # 2 lung slices > break-even 1
    assert settings["cpu_pixels_per_call"] is None  # 1 sample a call = the whole batch of 1
    assert probes.calls == {"slicing": 1, "compile": 1}


def test_a_short_run_is_not_compile_probed(cache: ProbeCache) -> None:
    # 16 slices at 0.1 s eager: far less than a first compile costs, so the compile probe is not run
    probes = Probes(seconds_per_slice=0.1)
    slices = max(16, tuning.PROBE_MIN_BATCHES * BATCH)
    choice = _choose(probes, slices, cache)
    assert probes.calls == {"slicing": 1, "compile": 0}
    assert choice.compile is False and "not probed" in choice.reason
    # a long run on the same machine (the slicing probe now cached) is probed and compiles past break-even
    long_run = int(tuning.COMPILE_PROBE_MIN_S / 0.1) + 1
    assert long_run > probes.break_even
    choice = _choose(probes, long_run, cache)
    assert probes.calls == {"slicing": 1, "compile": 1}
    assert choice.compile is True
