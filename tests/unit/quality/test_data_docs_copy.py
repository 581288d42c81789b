"""A chunk's Data Docs copied to each practice: every page each time, GX's static assets only the first time."""

from gpdata.quality.rules import copy_data_docs


def _site(root, page: str):
    (root / "static" / "fonts").mkdir(parents=True)
    (root / "static" / "fonts" / "a.otf").write_text("font")
    (root / "validations").mkdir()
    (root / "validations" / "v.html").write_text(page)
    (root / "index.html").write_text(page)
    return root


def test_pages_are_copied_every_time_and_static_assets_only_when_missing(tmp_path):
    target = tmp_path / "practice"
    copy_data_docs(_site(tmp_path / "run1", "first"), target)
    assert (target / "static" / "fonts" / "a.otf").read_text() == "font"
    assert (target / "index.html").read_text() == "first"

    second = _site(tmp_path / "run2", "second")
    (second / "static" / "fonts" / "a.otf").write_text("changed")
    copy_data_docs(second, target)
    assert (target / "index.html").read_text() == "second"
    assert (target / "validations" / "v.html").read_text() == "second"
    assert (target / "static" / "fonts" / "a.otf").read_text() == "font"  # kept: not copied again


def test_a_practice_without_static_assets_gets_them(tmp_path):
    target = tmp_path / "practice"
    target.mkdir()
    (target / "index.html").write_text("old")
    copy_data_docs(_site(tmp_path / "run", "new"), target)
    assert (target / "static" / "fonts" / "a.otf").exists()
    assert (target / "index.html").read_text() == "new"
