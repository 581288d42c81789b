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


def test_survey_leaves_out_only_the_broken_files_and_names_each(tmp_path):
    from gpdata.ingest.feeds import survey_feeds

    _write(tmp_path, "good.yaml", "ods_code: B82002\nname: B\nlocation: x\n")
    _write(tmp_path, "typo.yaml", "ods_code: A81001\nname: A\nlocaton: x\n")
    _write(tmp_path, "notyaml.yaml", "ods_code: [C83003\n")
    _write(tmp_path, "d1.yaml", "ods_code: D84004\nname: D\nlocation: x\n")
    _write(tmp_path, "d2.yaml", "ods_code: D84004\nname: D again\nlocation: y\n")
    feeds, problems = survey_feeds(tmp_path)
    assert [f.ods_code for f in feeds] == ["B82002"]
    by_file = {p.file.rsplit("/", 1)[-1]: p.cause for p in problems}
    assert set(by_file) == {"typo.yaml", "notyaml.yaml", "d1.yaml", "d2.yaml"}
    assert "locaton" in by_file["typo.yaml"] and "not valid YAML" in by_file["notyaml.yaml"]
    assert "duplicate ODS code D84004" in by_file["d1.yaml"] and "d2.yaml" in by_file["d1.yaml"]
    # the strict loader still refuses the folder as a whole
    with pytest.raises(ConfigError):
        load_feeds(tmp_path)
