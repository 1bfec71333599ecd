"""The benchmark scripts run: each prints its table on a random-weight model of the shipped size (their numbers are
measured by hand; here only that the script still works with the code it times)."""

import os
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow  # a subprocess that builds a shipped-size random pipeline and runs the app's handlers
def test_bench_app_times_every_kind_of_face(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_app", "--random-weights", "--steps", "2", "--repeats", "1"]
        + ["--skip-page", "--num-threads", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split("|") for line in proc.stdout.splitlines() if line.strip().startswith("2 |")]
    assert [row[1].strip() for row in rows] == ["generated", "photo", "portrait"], proc.stdout
    assert all(float(row[2]) > 0 for row in rows)
