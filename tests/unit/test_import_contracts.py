"""The import contracts in pyproject.toml's [tool.importlinter]: a manager is open to others only
through its records.py; the gateway reads the managers only through them; schemas and broker know
no store and nothing of services; the agent imports no store and no manager."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_import_contracts_hold() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
