"""The import contracts of pyproject.toml ([tool.importlinter]): the tree keeps them, and each one catches
the outward import it is there for (the same contracts on a small tree of empty packages with one bad
import), so `make test` fails on a layering break even where `make lint` is not run."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import ROOT

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
PACKAGES = (
    "server",
    "server/base",
    "server/web",
    "server/bus",
    "server/worker",
    "server/local",
    "handlers",
    "actors",
    "storage",
    "migrations",
)
ROOT_MODULES = ("server/app.py", "server/jobs.py", "server/cli.py")


def _contracts_section() -> str:
    """The [tool.importlinter] tables of the repository's pyproject.toml, verbatim."""
    text = (ROOT / "pyproject.toml").read_text()
    match = re.search(r"^\[tool\.importlinter\]\n.*?(?=^\[tool\.(?!importlinter))", text, re.M | re.S)
    assert match, "pyproject.toml has no [tool.importlinter] section"
    return match.group(0)


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    # A process of its own, run in `cwd`: grimp finds the root packages from there, and the test
    # process's imports stay out of it. --no-cache: nothing written into the checkout.
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_tree_keeps_every_contract() -> None:
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"Contracts: \d+ kept, 0 broken", result.stdout), result.stdout


@pytest.mark.parametrize(
    ("module", "statement", "contract"),
    [
        ("storage/x.py", "import handlers", "Storage imports nothing above it"),
        ("storage/x.py", "import actors", "Layers: composition root"),
        ("actors/x.py", "import aiohttp", "Actors are free of HTTP"),
        ("actors/x.py", "import server.base", "Actors are free of HTTP"),
        ("handlers/x.py", "import server.app", "Layers: composition root"),
        ("server/web/x.py", "import server.worker", "Layers: composition root"),
        ("server/worker/x.py", "import server.local", "Layers: composition root"),
        ("server/bus/x.py", "import server.web", "Layers: composition root"),
        ("server/base/x.py", "import server.bus", "Layers: composition root"),
        ("server/web/x.py", "import handlers", "Layers: composition root"),
        ("migrations/x.py", "import server.worker", "Migrations stand on storage"),
    ],
)
def test_each_contract_catches_an_outward_import(
    tmp_path: Path, module: str, statement: str, contract: str
) -> None:
    (tmp_path / "pyproject.toml").write_text(_contracts_section())
    for package in PACKAGES:
        (tmp_path / package).mkdir(parents=True)
        (tmp_path / package / "__init__.py").write_text("")
    for name in ROOT_MODULES:
        (tmp_path / name).write_text("")
    clean = _lint_imports(tmp_path)
    assert clean.returncode == 0, clean.stdout + clean.stderr

    (tmp_path / module).write_text(statement + "\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout
    broken = [line for line in result.stdout.splitlines() if line.endswith(" BROKEN")]
    assert any(line.startswith(contract) for line in broken), result.stdout
