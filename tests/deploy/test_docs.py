"""The docs stay true to the code, checked mechanically: every environment variable the settings read
is documented in README's Configure section and in .env.example; every endpoint README lists is in the
OpenAPI document; every test a doc cites exists under that exact name in the file it names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import Client

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _section(text: str, title: str) -> str:
    found = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.MULTILINE | re.DOTALL)
    assert found, f"README has no '## {title}' section"
    return found.group(1)


def _variables() -> set[str]:
    """Every variable server/base/settings.py reads, and the CLI's own (`booking up`, `create-admin`)."""
    names: set[str] = set()
    for source in ("server/base/settings.py", "server/cli.py"):
        text = (ROOT / source).read_text(encoding="utf-8")
        names |= set(re.findall(r'env(?:iron)?(?:\.get\(|, )"([A-Z][A-Z0-9_]+)"', text))
        names |= set(re.findall(r'"([A-Z][A-Z0-9_]+)" in env\b', text))
    return names


def test_the_variable_list_is_read_from_the_code() -> None:
    assert {"DATABASE_URL", "NODE_ENV", "APP_ENV", "REDIS_SKIP_SECONDS", "WEB_CONCURRENCY"} <= _variables()


@pytest.mark.parametrize("name", sorted(_variables()))
def test_every_variable_is_documented_in_readme_and_env_example(name: str) -> None:
    word = re.compile(rf"(?<![A-Z0-9_]){name}(?![A-Z0-9_])")
    assert word.search(_section(README, "Configure")), f"README's Configure section does not name {name}"
    example = (ROOT / ".env.example").read_text(encoding="utf-8")
    assert word.search(example), f".env.example does not name {name}"


async def test_every_endpoint_readme_lists_is_in_the_openapi_document(client: Client) -> None:
    document = await (await client.get("/api/docs/openapi.json")).json()
    listed = re.findall(r"`(GET|POST|PATCH|PUT|DELETE) (/[^`?\s]*)", _section(README, "API at a glance"))
    assert len(listed) >= 20, listed
    missing = [
        f"{method} {path}" for method, path in listed if method.lower() not in document["paths"].get(path, {})
    ]
    assert not missing, f"README lists endpoints the OpenAPI document lacks: {missing}"


def _cited_tests() -> list[tuple[str, str, str]]:
    """(doc, test file, test name): `test_x.py::test_y`, and bare `test_z` after it in the same table
    row or paragraph (the docs name the file once, then more tests of it)."""
    cited = []
    for doc in sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")]):
        for block in re.split(r"\n\s*\n|\n(?=\|)", doc.read_text(encoding="utf-8")):
            current = None
            for found in re.finditer(r"(test_\w+\.py)(?:::(test_\w+))?|`(test_\w+)`", block):
                if found.group(1):
                    current, name = found.group(1), found.group(2)
                else:
                    name = found.group(3)
                if name and current:
                    cited.append((doc.name, current, name))
    return cited


def test_docs_cite_tests() -> None:
    assert len(_cited_tests()) >= 30


@pytest.mark.parametrize(("doc", "file", "name"), _cited_tests())
def test_every_cited_test_exists_with_that_name(doc: str, file: str, name: str) -> None:
    found = list((ROOT / "tests").glob(f"*/{file}"))  # in whichever tier folder holds it
    assert len(found) == 1, f"{doc} cites {file}, which does not exist"
    path = found[0]
    assert re.search(rf"^(?:async )?def {name}\(", path.read_text(encoding="utf-8"), re.MULTILINE), (
        f"{doc} cites {file}::{name}, which does not exist"
    )
