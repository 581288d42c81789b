import pytest

from gpdata.errors import ConfigError
from gpdata.ingest.feeds import load_feeds


def _write(folder, name, text):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)


def test_valid_feeds_load_sorted_with_relative_location(tmp_path):
    _write(tmp_path, "b.yaml", "ods_code: B82002\nname: B\nlocation: ../src/B\n")
    _write(tmp_path, "a.yaml", "ods_code: A81001\nname: A\nlocation: /data/A\nactive: false\n")
    feeds = load_feeds(tmp_path)
    assert [f.ods_code for f in feeds] == ["A81001", "B82002"]
    assert feeds[1].location_path() == (tmp_path.parent / "src" / "B").resolve()
    assert [f.ods_code for f in load_feeds(tmp_path, active_only=True)] == ["B82002"]


@pytest.mark.parametrize("text, field", [
    ("ods_code: 81001\nname: A\nlocation: x\n", "ods_code"),
    ("ods_code: A81001\nname: A\nlocation: x\nformat: csv\n", "format"),
    ("ods_code: A81001\nname: A\nlocation: x\nsurprise: 1\n", "surprise"),
    ("ods_code: A81001\nlocation: x\n", "name"),
    ("ods_code: A81001\nname: A\nlocation: x\nmax_quarantine_fraction: 2\n", "max_quarantine_fraction"),
])
def test_wrong_field_is_named_with_the_file(tmp_path, text, field):
    _write(tmp_path, "bad.yaml", text)
    with pytest.raises(ConfigError) as err:
        load_feeds(tmp_path)
    assert "bad.yaml" in str(err.value) and f"field '{field}'" in str(err.value)


def test_duplicate_ods_code_is_an_error(tmp_path):
    _write(tmp_path, "a.yaml", "ods_code: A81001\nname: A\nlocation: x\n")
    _write(tmp_path, "b.yaml", "ods_code: A81001\nname: B\nlocation: y\n")
    with pytest.raises(ConfigError, match="duplicate ODS code A81001"):
        load_feeds(tmp_path)
