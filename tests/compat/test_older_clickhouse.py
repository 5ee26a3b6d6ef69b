"""The oldest ClickHouse the service states it runs on (README: 25.8 LTS) runs its schema
migrations and every kind of API query: `check_engine.py` in a separate environment whose
`chdb` is the build of that release (chdb 3.7.2 = ClickHouse 25.8.2), installed once into
.cache/. It fails on any function, setting or syntax that release lacks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT

OLD_CHDB = "3.7.2"  # ClickHouse 25.8.2, the 25.8 LTS line
OLDEST_SERVER = "25.8"


def _install(target: os.PathLike[str]) -> None:
    uv = ROOT / ".tools" / "bin" / "uv"
    found = str(uv) if uv.exists() else shutil.which("uv")
    if found is None:
        pytest.fail("uv is needed to install the older chdb build (`make setup` installs it)")
    command = [found, "pip", "install", "--no-deps", "--target", str(target), f"chdb=={OLD_CHDB}"]
    subprocess.run(
        [*command, "--python", sys.executable],
        check=True,
        capture_output=True,
        timeout=900,
    )


def test_migrations_and_queries_run_on_the_oldest_stated_release() -> None:
    target = ROOT / ".cache" / "compat" / f"chdb-{OLD_CHDB}"
    if not (target / "chdb").is_dir():
        _install(target)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(ROOT / "services"), str(ROOT)])}
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "compat" / "check_engine.py")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"engine: ClickHouse {OLDEST_SERVER}." in done.stdout
    assert "ok  migration 0003_merge_closed_months" in done.stdout and "all checks passed" in done.stdout
