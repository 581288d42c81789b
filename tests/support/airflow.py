"""Running the `airflow` command of this venv from tests (system and browser tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

AIRFLOW = str(Path(sys.executable).with_name("airflow"))


def run_airflow(env: dict[str, str], *args: str, check: bool = True) -> str:
    """`airflow ARGS` with ``env``; its stdout and stderr. With ``check``, a non-zero exit fails the test with the
    end of the output."""
    proc = subprocess.run([AIRFLOW, *args], env=env, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    if check:
        assert proc.returncode == 0, output[-5000:]
    return output
