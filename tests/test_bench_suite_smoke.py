"""The benchmark suite runs end to end on tiny data (no figures asserted), so it cannot rot."""

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import PROJECT_ROOT


def test_benchmark_suite_smoke_run_writes_its_json_and_chart(tmp_path: Path) -> None:
    report, chart = tmp_path / "suite.json", tmp_path / "suite.png"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.suite",
            "--smoke",
            "--json",
            str(report),
            "--chart",
            str(chart),
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    measured = json.loads(report.read_text())
    assert [size["size"] for size in measured["sizes"]] == ["tiny"]
    assert chart.read_bytes().startswith(b"\x89PNG")
    # A floor that answers differently from the app would make every ratio meaningless.
    rows = [row for row in measured["summary"]["rows"] if "same_answer" in row]
    assert rows
    assert all(row["same_answer"] for row in rows), rows
    # Issue 15's ingest table: every way beside its floors, and the app with two workers.
    ingest = {row["measurement"] for row in measured["summary"]["rows"] if "messages_per_s" in row}
    assert {"floor", "floor_http_mutation", "webhook_10", "workers_1", "workers_2"} <= ingest
    shapes = [row for row in measured["summary"]["rows"] if "same_answer_shape" in row]
    assert len(shapes) == 3
    assert all(row["same_answer_shape"] for row in shapes), shapes
