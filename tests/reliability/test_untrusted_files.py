"""Untrusted files: checkpoints never run code, no pickle of user data, trusted configs, a local-only server."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch

from covid_ct_cgan.engines.stages import load_latest_checkpoint
from covid_ct_cgan.errors import InputError
from covid_ct_cgan.inference import load_generator
from covid_ct_cgan.networks import GlobalLocalGenerator
from covid_ct_cgan.networks.handover import load_generator_part

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE = REPO_ROOT / "custom" / "covid_ct_cgan"
MARKER = Path("/tmp") / "covid_ct_cgan_pickle_payload_ran"
PICKLING_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal", "_pickle"}


class Payload:
    """Unpickling this object runs code (creates MARKER): what a malicious checkpoint would do."""

    def __reduce__(self):
        return (MARKER.touch, ())


def generator() -> GlobalLocalGenerator:
    return GlobalLocalGenerator(4, 1, mode="joint", ngf=8, n_downsampling=1, n_blocks_global=1, n_blocks_local=1)


@pytest.fixture
def malicious(tmp_path: Path) -> Path:
    """A checkpoint with real weights plus a payload, named like a training checkpoint."""
    MARKER.unlink(missing_ok=True)
    folder = tmp_path / "joint"
    folder.mkdir()
    path = folder / "checkpoint_epoch=9.pt"
    torch.save({"generator": generator().state_dict(), "trainer": {"iteration": 1}, "extra": Payload()}, path)
    yield path
    MARKER.unlink(missing_ok=True)


def test_a_checkpoint_that_would_run_code_is_refused_everywhere(malicious: Path) -> None:
    with pytest.raises(InputError) as err:
        load_generator(generator(), malicious)
    assert str(err.value).startswith(f"{malicious}: cannot read checkpoint (UnpicklingError")
    assert load_latest_checkpoint(malicious.parent, required=["generator"]) is None  # skipped with a warning
    with pytest.raises(InputError, match="cannot read checkpoint"):
        load_generator_part(generator(), malicious, "global_net")
    assert not MARKER.exists(), "unpickling ran the payload"


def _calls(tree: ast.AST, dotted: str) -> list[ast.Call]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = ast.unparse(func) if isinstance(func, (ast.Attribute, ast.Name)) else ""
            if name == dotted:
                found.append(node)
    return found


def test_package_loads_no_pickle_of_user_data() -> None:
    """Every torch.load is weights_only=True; no pickle-family module, no np.load with allow_pickle, no eval/exec."""
    sources = sorted(PACKAGE.rglob("*.py"))
    assert len(sources) > 10
    torch_loads = 0
    for path in sources:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert not {a.name.split(".")[0] for a in node.names} & PICKLING_MODULES, f"{path}: imports {ast.unparse(node)}"
            if isinstance(node, ast.ImportFrom) and node.module:
                assert node.module.split(".")[0] not in PICKLING_MODULES, f"{path}: {ast.unparse(node)}"
        for call in _calls(tree, "torch.load"):
            torch_loads += 1
            kwargs = {k.arg: k.value for k in call.keywords}
            assert isinstance(kwargs.get("weights_only"), ast.Constant) and kwargs["weights_only"].value is True, (
                f"{path}:{call.lineno}: torch.load without weights_only=True"
            )
        for name in ("np.load", "numpy.load"):
            for call in _calls(tree, name):
                kwargs = {k.arg: k.value for k in call.keywords}
                assert not (isinstance(kwargs.get("allow_pickle"), ast.Constant) and kwargs["allow_pickle"].value), (
                    f"{path}:{call.lineno}: np.load(allow_pickle=True)"
                )
        for name in ("eval", "exec", "yaml.load", "yaml.unsafe_load", "torch.jit.load"):
            assert not _calls(tree, name), f"{path}: calls {name}"
    assert torch_loads == 1  # the one checkpoint reader, covid_ct_cgan.checkpoints.read_checkpoint
    reader = ast.parse((PACKAGE / "checkpoints.py").read_text(encoding="utf-8"))
    assert len(_calls(reader, "torch.load")) == 1, "the torch.load is not in covid_ct_cgan/checkpoints.py"


def test_monai_label_server_binds_localhost_unless_told_otherwise() -> None:
    script = REPO_ROOT / "bundle" / "monailabel" / "start_server.sh"
    if not script.is_file():
        pytest.skip("no MONAI Label app in this repository")
    launch = [line for line in script.read_text().splitlines() if "start_server" in line and not line.lstrip().startswith("#")]
    assert launch, "start_server.sh does not start the server"
    for line in launch:
        assert re.search(r"--host 127\.0\.0\.1\b.*\"\$@\"", line), f"the default host must be 127.0.0.1 and come first: {line}"
    docs = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "bundle" / "docs").glob("*.md"))]  # the guide and its pages
    for doc in (d for d in docs if d.is_file()):
        for line in doc.read_text().splitlines():
            if "monailabel.main start_server" in line:
                assert "--host 127.0.0.1" in line, f"{doc.name}: {line}"
            assert "--host 0.0.0.0" not in line, f"{doc.name} tells users to bind all interfaces: {line}"


def test_docs_say_configs_must_come_from_trusted_sources_and_list_reliability() -> None:
    text = (REPO_ROOT / "bundle" / "docs" / "README.md").read_text()
    section = re.search(r"^## Reliability\b(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert section, "bundle/docs/README.md has no '## Reliability' section"
    body = section.group(1)
    assert re.search(r"trusted", body, re.I) and re.search(r"Python", body), "no statement that configs run Python code"
    assert re.search(r"weights_only=True", body)
    assert re.search(r"127\.0\.0\.1", body)
    assert re.search(r"\b\d+ (damaged )?inputs\b", body) and re.search(r"\bkills?\b", body), "numbers of what is tested"
