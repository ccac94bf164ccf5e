"""The Python demo runs and passes its own checks."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_demo_runs():
    out = subprocess.run([sys.executable, str(ROOT / "examples/python/demo.py")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "FAIL" not in out.stdout and out.stdout.rstrip().endswith("All checks passed.")
