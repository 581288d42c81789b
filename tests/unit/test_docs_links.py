"""Every relative link and image in README.md and docs/ resolves inside the repository, anchors included, and
the README stays short (issue 20)."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest

from gpdata.ops.airflow_env import REPO_ROOT

README_MAX_BYTES = 10_240
PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").rglob("*.md"))]

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,}).*?^ {0,3}\1[^\S\n]*$", re.M | re.S)
_CODE_SPAN = re.compile(r"(`+).+?\1", re.S)
# [text](target "title"), ![alt](target), and reference definitions [label]: target
_INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.M)
_HTML = re.compile(r"<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*\"([^\"]+)\"", re.I)
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)


def _prose(text: str) -> str:
    """The Markdown without fenced code blocks and code spans, where nothing is a link."""
    return _CODE_SPAN.sub("code", _FENCE.sub("", text))


def links(text: str) -> list[str]:
    prose = _prose(text)
    return [m.group(1) for pattern in (_INLINE, _REFERENCE, _HTML) for m in pattern.finditer(prose)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: Markdown and punctuation dropped, lower case, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)       # a link's text only
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading's anchor (a repeated heading gets -1, -2, ...) and every explicit id/name."""
    seen: dict[str, int] = {}
    out = set()
    for m in re.finditer(r"^ {0,3}#{1,6}\s+(.+?)\s*#*\s*$", _FENCE.sub("", text), re.M):
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    out.update(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", text))
    return out


def problems(page: Path, root: Path = REPO_ROOT) -> list[str]:
    """What is wrong with ``page``'s links: a target missing, outside ``root``, or an anchor with no heading."""
    found = []
    for target in links(page.read_text()):
        if _SCHEME.match(target) or target.startswith("//"):
            continue  # a web address: not a file of the repository
        path_part, _, anchor = target.partition("#")
        path_part = unquote(path_part)
        if path_part.startswith("/"):
            found.append(f"{target}: an absolute path (links must be relative to the page)")
            continue
        resolved = (page.parent / path_part).resolve() if path_part else page.resolve()
        if not resolved.is_relative_to(root.resolve()):
            found.append(f"{target}: points outside the repository")
            continue
        if not resolved.exists():
            found.append(f"{target}: no such file {resolved.relative_to(root.resolve())}")
            continue
        if anchor and resolved.suffix == ".md" and unquote(anchor).lower() not in anchors(resolved.read_text()):
            found.append(f"{target}: no heading #{anchor} in {resolved.relative_to(root.resolve())}")
    return found


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO_ROOT)) for p in PAGES])
def test_every_link_resolves_inside_the_repository(page):
    assert not problems(page), f"{page.relative_to(REPO_ROOT)}: " + "; ".join(problems(page))


def test_the_readme_is_at_most_10_kib():
    size = len((REPO_ROOT / "README.md").read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size:,} bytes; move detail to a page under docs/"


def test_the_checker_finds_each_kind_of_broken_link(tmp_path):
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    (root / "outside.md").write_text("# x\n")
    (root / "docs" / "target.md").write_text(
        "# Target page\n\n## Keys, pseudonyms and rotation\n\n## Keys, pseudonyms and rotation\n")
    page = root / "docs" / "page.md"
    page.write_text(
        "# Page\n\n"
        "[ok](target.md) [ok](target.md#keys-pseudonyms-and-rotation) [ok](target.md#keys-pseudonyms-and-rotation-1) "
        "[ok](#page) [ok](../outside.md) [web](https://example.org/x.md) ![ok](target.md)\n\n"
        "```\n[not a link](missing-in-code.md)\n```\n`[not a link](missing-in-span.md)`\n\n"
        "[gone](missing.md) ![gone](img/none.png) [anchor](target.md#no-such-heading) [self](#nope) "
        "[out](../../shared/design.md) [abs](/etc/passwd)\n\n[ref]: missing-ref.md\n")
    found = problems(page, root)
    assert [f.split(":")[0] for f in found] == [
        "missing.md", "img/none.png", "target.md#no-such-heading", "#nope", "../../shared/design.md", "/etc/passwd",
        "missing-ref.md"]
    assert "outside the repository" in found[4] and "no heading" in found[2]


@pytest.mark.parametrize(("heading", "anchor"), [
    ("Performance (`make bench`)", "performance-make-bench"),
    ("Keys, pseudonyms and rotation", "keys-pseudonyms-and-rotation"),
    ("Operators' view in the Airflow UI", "operators-view-in-the-airflow-ui"),
    ("What `make test` needs", "what-make-test-needs"),
    ("[Linked](x.md) heading", "linked-heading"),
])
def test_anchors_follow_github(heading, anchor):
    assert slug(heading) == anchor
