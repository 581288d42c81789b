"""The reliability page's table (docs/reliability.md) and this suite name the same tests."""

import ast
import re
from pathlib import Path

HERE = Path(__file__).parent
PAGE = HERE.parents[1] / "docs" / "reliability.md"
SECTION = "## Scenarios and guarantees"


def _table() -> str:
    text = PAGE.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return text[start:] if end < 0 else text[start:end]


def _tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}


def test_every_test_named_in_the_table_exists_and_every_test_is_named():
    table = _table()
    named = set(re.findall(r"`(test_\w+\.py)::(test_\w+)`", table))
    whole_files = set(re.findall(r"`(test_\w+\.py)`", table))
    files = {p.name: _tests(p) for p in HERE.glob("test_*.py") if p.name != Path(__file__).name}
    for file, test in named:
        assert test in files.get(file, set()), f"docs/reliability.md names {file}::{test}, which does not exist"
    for file, tests in files.items():
        if file in whole_files:
            continue
        missing = tests - {t for f, t in named if f == file}
        assert not missing, f"{file}: {sorted(missing)} not in docs/reliability.md's table"
