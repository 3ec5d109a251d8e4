"""The package's layers point one way.

Every import in every module under ``custom/covid_ct_cgan`` (top-level and inside
functions) is read with :mod:`ast` and checked against the layers:

0. ``errors, labels, intensity, fileio`` and the small shared modules (``logs``, ``locking``,
   ``figures``, ``precision``, ``checkpoints``);
1. ``data, transforms, networks, losses``;
2. the settings of a run (``settings``, ``checkpoint_settings``);
3. ``engines`` (training) and ``inference``, side by side: neither imports the other;
4. ``evaluation``.

A module imports only from its own layer or the ones below, and not the modules of its own
layer that ``MUST_NOT_IMPORT`` names (cycles). The bundle's configs keep
naming things that exist (``covid_ct_cgan.engines.amp_by_default`` ...).
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = REPO_ROOT / "custom" / "covid_ct_cgan"
ROOT = "covid_ct_cgan"

LAYERS: dict[str, int] = {
    "": 0,  # the package's own __init__
    "errors": 0, "labels": 0, "intensity": 0, "fileio": 0, "logs": 0, "locking": 0, "figures": 0,
    "precision": 0, "checkpoints": 0,
    "data": 1, "transforms": 1, "networks": 1, "losses": 1,
    "settings": 2, "checkpoint_settings": 2,
    "engines": 3, "inference": 3,
    "evaluation": 4,
}
SIDE_BY_SIDE = {("engines", "inference"), ("inference", "engines")}
# module -> modules it must not import, within a layer: the int8 export is one of synthesis's engines,
# so synthesis imports it and it takes the model grid from ``inference.grid``, never from synthesis
MUST_NOT_IMPORT: dict[str, set[str]] = {
    f"{ROOT}.inference.export": {f"{ROOT}.inference.synthesis", f"{ROOT}.inference.workflow"},
}


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def known_modules() -> set[str]:
    return {module_name(p) for p in PACKAGE.rglob("*.py")}


def imported_modules(path: Path, modules: set[str], package_dir: Path = PACKAGE) -> list[tuple[int, str]]:
    """``(line, module)`` for every import of the package's own modules in ``path`` (relative ones resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = module_name(path, package_dir).split(".")
    package = here if is_package(path) else here[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == ROOT]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != ROOT:
                continue
            for alias in node.names:  # ``from .. import intensity`` imports a module
                sub = f"{target}.{alias.name}"
                found.append((node.lineno, sub if sub in modules else target))
    return found


def layer_of(module: str) -> tuple[str, int]:
    parts = module.split(".")
    name = parts[1] if len(parts) > 1 else ""
    assert name in LAYERS, f"{module} is in no layer: add it to LAYERS in {Path(__file__).name}"
    return name, LAYERS[name]


def test_every_import_points_down_and_engines_and_inference_stay_apart() -> None:
    modules = known_modules()
    sources = sorted(PACKAGE.rglob("*.py"))
    assert len(sources) > 40
    problems, checked = [], 0
    for path in sources:
        importer, rank = layer_of(module_name(path))
        for line, target in imported_modules(path, modules):
            checked += 1
            imported, target_rank = layer_of(target)
            where = f"{path.relative_to(REPO_ROOT)}:{line} imports {target}"
            if (importer, imported) in SIDE_BY_SIDE:
                problems.append(f"{where}: {importer} and {imported} stand side by side and must not import each other")
            elif target_rank > rank:
                problems.append(f"{where}: layer {rank} ({importer or ROOT}) imports layer {target_rank} ({imported})")
    assert checked > 100  # the imports were found
    assert not problems, "\n".join(problems)


def test_modules_kept_apart_within_a_layer() -> None:
    modules = known_modules()
    assert set(MUST_NOT_IMPORT) <= modules, "MUST_NOT_IMPORT names a module that no longer exists"
    problems = [
        f"{path.relative_to(REPO_ROOT)}:{line} imports {target}, which {importer} must not import"
        for path in sorted(PACKAGE.rglob("*.py"))
        if (importer := module_name(path)) in MUST_NOT_IMPORT
        for line, target in imported_modules(path, modules)
        if target in MUST_NOT_IMPORT[importer]
    ]
    assert not problems, "\n".join(problems)


def test_inference_names_no_training_engine() -> None:
    pattern = re.compile(r"covid_ct_cgan\.engines|from \.\.engines")
    hits = [
        f"{path.relative_to(REPO_ROOT)}:{n}: {line.strip()}"
        for path in sorted((PACKAGE / "inference").rglob("*.py"))
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert not hits, "\n".join(hits)


@pytest.mark.parametrize(
    ("source", "imports"),
    [
        ("from covid_ct_cgan.inference import x", {"covid_ct_cgan.inference"}),
        ("import covid_ct_cgan.engines.stages", {"covid_ct_cgan.engines.stages"}),
        ("def f():\n    from ..engines.trainer import unwrap", {"covid_ct_cgan.engines.trainer"}),
        ("from .. import intensity", {"covid_ct_cgan.intensity"}),
        ("from . import tuning", {"covid_ct_cgan.inference.tuning"}),
        ("import torch\nfrom monai import bundle", set()),
    ],
)
def test_the_import_reader_resolves_relative_and_nested_imports(tmp_path: Path, source: str, imports: set) -> None:
    """The checker itself: a module at ``covid_ct_cgan/inference/probe.py`` with ``source``."""
    fake = tmp_path / ROOT
    (fake / "inference").mkdir(parents=True)
    path = fake / "inference" / "probe.py"
    path.write_text(source + "\n")
    modules = {f"{ROOT}.inference.tuning", f"{ROOT}.intensity"}
    assert {m for _, m in imported_modules(path, modules, package_dir=fake)} == imports


def test_a_module_importing_up_or_across_is_caught() -> None:
    """What the layering test reports, on the rules themselves."""
    assert layer_of("covid_ct_cgan.inference.synthesis") == ("inference", 3)
    assert ("inference", "engines") in SIDE_BY_SIDE and ("engines", "inference") in SIDE_BY_SIDE
    assert layer_of("covid_ct_cgan.networks.handover")[1] < layer_of("covid_ct_cgan.engines.trainer")[1]
    with pytest.raises(AssertionError, match="in no layer"):
        layer_of("covid_ct_cgan.newcomer")


def test_the_names_the_configs_use_exist() -> None:
    """Every ``covid_ct_cgan.<module>.<name>`` a bundle config or the MONAI Label app names resolves."""
    files = sorted((REPO_ROOT / "bundle" / "configs").rglob("*.yaml")) + sorted((REPO_ROOT / "bundle" / "configs").rglob("*.json"))
    files += sorted((REPO_ROOT / "bundle" / "monailabel").rglob("*.py"))
    names = set()
    for path in files:
        names |= set(re.findall(r"\bcovid_ct_cgan(?:\.[A-Za-z_]\w*)+", path.read_text(encoding="utf-8")))
    assert {"covid_ct_cgan.engines.amp_by_default", "covid_ct_cgan.precision.amp_by_default"} <= names
    missing = []
    for name in sorted(names):
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):  # the longest importable module, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ModuleNotFoundError:
                continue
            try:
                for attr in parts[cut:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                missing.append(name)
            break
        else:
            missing.append(name)
    assert not missing, f"configs name what does not exist: {missing}"
