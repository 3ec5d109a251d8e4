"""Importing the package changes nothing global; the entry points install the log and warning filters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

# run in a fresh interpreter (pytest changes warnings.filters itself): the libraries the package uses are
# imported first, so only what importing covid_ct_cgan and every module of it changes is compared
PROBE = r"""
import importlib, json, logging, os, pkgutil, warnings
import ignite.engine, monai.bundle, monai.data, monai.transforms, torch

def loggers():
    found = {name: lg for name, lg in logging.Logger.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    found["<root>"] = logging.getLogger()
    return {name: [lg.level, [type(f).__name__ for f in lg.filters],
                   [[type(h).__name__, [type(f).__name__ for f in h.filters]] for h in lg.handlers]]
            for name, lg in found.items()}

env, filters, before = dict(os.environ), list(warnings.filters), loggers()
import covid_ct_cgan
modules = [m.name for m in pkgutil.walk_packages(covid_ct_cgan.__path__, "covid_ct_cgan.")]
for name in modules:
    importlib.import_module(name)
after = loggers()
found = {
    "modules": len(modules),
    "environment_changed": sorted(k for k in set(env) | set(os.environ) if env.get(k) != os.environ.get(k)),
    "warning_filters_unchanged": list(warnings.filters) == filters,
    "loggers_changed": sorted(n for n in before if after.get(n) != before[n]),
    "new_loggers_with_filters_or_handlers": sorted(n for n, v in after.items() if n not in before and (v[1] or v[2])),
}
from covid_ct_cgan.errors import entry_point

entry_point(lambda: None)
found["warnings_ignored_by_an_entry_point"] = [f[1].pattern for f in warnings.filters if f not in filters]
print(json.dumps(found))
"""


def test_import_leaves_logging_warnings_and_environment_alone() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "custom")}
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          check=False, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["modules"] > 20  # every module of the package was imported
    assert found["environment_changed"] == []
    assert found["warning_filters_unchanged"] is True
    assert found["loggers_changed"] == [] and found["new_loggers_with_filters_or_handlers"] == []
    # an entry point installs them when it starts (covid_ct_cgan.logs.install_log_filters)
    assert found["warnings_ignored_by_an_entry_point"] == [
        "NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register"]
