"""The benchmark code runs (tiny sizes, no figures asserted), so it cannot rot unnoticed."""

import subprocess
import sys
from pathlib import Path

from tests.conftest import PROJECT_ROOT


def test_fanout_benchmark_smoke_run_delivers_to_every_subscriber(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.fanout", "--smoke", "--json", str(tmp_path / "f.json")],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "f.json").exists()


def test_row_level_security_benchmark_smoke_run_measures_both_servers(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.rls", "--smoke", "--json", str(tmp_path / "rls.json")],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "rls.json").exists()
