"""The bundle configs read like MONAI model-zoo bundles: no ``$`` expression longer than 120 characters.

A longer expression belongs in a config entry (a mapping of ``@`` references, a ``_target_`` component)
or in a small named function (``covid_ct_cgan.engines.config_helpers``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

CONFIGS = Path(__file__).resolve().parents[1] / "bundle" / "configs"
MAX_EXPRESSION = 120


def expressions(node: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """``(config id, expression)`` of every ``$`` string in a loaded config, ids joined with ``#`` as MONAI does."""
    if isinstance(node, dict):
        for name, value in node.items():
            yield from expressions(value, f"{key}#{name}" if key else str(name))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from expressions(value, f"{key}#{index}" if key else str(index))
    elif isinstance(node, str) and node.startswith("$"):
        yield key, node


def config_files() -> list[Path]:
    return sorted(CONFIGS.rglob("*.yaml"))


def test_the_configs_are_found() -> None:
    names = {p.relative_to(CONFIGS).as_posix() for p in config_files()}
    assert {"train.yaml", "inference.yaml", "evaluate.yaml", "segmentation.yaml", "multi_gpu_train.yaml"} <= names
    assert any(name.startswith("ablation/") for name in names)


def test_expressions_walks_nested_entries() -> None:
    found = dict(expressions({"a": {"b": ["$x", "y", {"c": "$@a + 1"}]}, "d": "plain", "e": 3}))
    assert found == {"a#b#0": "$x", "a#b#2#c": "$@a + 1"}


@pytest.mark.parametrize("path", config_files(), ids=lambda p: p.relative_to(CONFIGS).as_posix())
def test_no_expression_is_longer_than_120_characters(path: Path) -> None:
    config = yaml.safe_load(path.read_text())
    offenders = [f"{key} ({len(text)} characters)" for key, text in expressions(config) if len(text) > MAX_EXPRESSION]
    name = path.relative_to(CONFIGS)
    assert not offenders, f"{name}: expressions over {MAX_EXPRESSION} characters: {', '.join(offenders)}"
