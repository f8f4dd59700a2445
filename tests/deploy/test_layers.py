"""The import contracts of pyproject.toml ([tool.importlinter]): the tree keeps them, and each one catches
the outward import it is there for (the same contracts on a small tree of empty packages, plus the
imports the contracts allow by name, with one bad import), so `make test` fails on a layering break even
where `make lint` is not run."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
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
    "actors/domain",
    "actors/services",
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


def _allowed_imports(tree: Path, contracts: str) -> None:
    """The imports the contracts let through by name (`ignore_imports`), made real in `tree`: an ignored
    import that matches nothing is an error of its own. A wildcard stands for one module of the package."""
    for contract in tomllib.loads(contracts)["tool"]["importlinter"]["contracts"]:
        for rule in contract.get("ignore_imports", []):
            importer, imported = (side.strip() for side in rule.split("->"))
            importer, imported = importer.replace("**", "allowed_a"), imported.replace("**", "allowed_b")
            for module in (importer, imported):
                path = tree / (module.replace(".", "/") + ".py")
                if not path.exists():
                    path.write_text("")
            with (tree / (importer.replace(".", "/") + ".py")).open("a") as source:
                source.write(f"import {imported}\n")


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
        ("actors/domain/x.py", "import actors.services", "The domain is pure"),
        ("actors/domain/x.py", "import storage", "The domain is pure"),
        ("actors/domain/x.py", "import redis", "The domain is pure"),
        ("actors/domain/x.py", "import asyncpg", "The domain is pure"),
    ],
)
def test_each_contract_catches_an_outward_import(
    tmp_path: Path, module: str, statement: str, contract: str
) -> None:
    contracts = _contracts_section()
    (tmp_path / "pyproject.toml").write_text(contracts)
    for package in PACKAGES:
        (tmp_path / package).mkdir(parents=True)
        (tmp_path / package / "__init__.py").write_text("")
    for name in ROOT_MODULES:
        (tmp_path / name).write_text("")
    _allowed_imports(tmp_path, contracts)
    clean = _lint_imports(tmp_path)
    assert clean.returncode == 0, clean.stdout + clean.stderr

    (tmp_path / module).write_text(statement + "\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout
    # "<name> BROKEN", or "<name> BROKEN (n ignored imports)" for a contract with ignore_imports
    broken = [line for line in result.stdout.splitlines() if re.search(r" BROKEN( \(.*\))?$", line)]
    assert any(line.startswith(contract) for line in broken), result.stdout
