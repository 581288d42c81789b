"""Dialect features by configuration alone: the shipped research-database-style dialect (research_tab) gives the
same curated store as the FHIR delivery of the same patients, where the format carries the fields; dialects from
GPDATA_DIALECTS_DIR; every feature's validation names the file and the field; ``gpdata dialects`` and ``gpdata
feeds add --check-sample``."""

import datetime as dt
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml

from gpdata import pipeline, settings, store
from gpdata.errors import ConfigError, SourceError
from gpdata.ingest.dialects import known_dialects, load_dialect
from gpdata.ingest.feeds import Feed, load_feeds
from gpdata.ingest.sources.flatfile import list_files, read_file
from gpdata.model import TABLES
from gpdata.ops import cli
from gpdata.synth import exports, generate

TODAY = dt.date(2026, 1, 1)
ODS = "A81001"
SHIPPED = Path(settings.DEFAULT_DIALECTS_DIR)


@pytest.fixture
def generated(home):
    generate(home, n_practices=1, n_patients=60, seed=11, ods_codes=[ODS])
    return home / "sources" / ODS


def _feed(fmt: str, location=None, **kw) -> Feed:
    return Feed(ods_code=ODS, name="Test practice", supplier="test", format=fmt,
                location=str(location) if location else None, **kw)


def _sorted(t: pa.Table, key: str) -> pa.Table:
    return t.sort_by([(key, "ascending"), *[(c, "ascending") for c in t.column_names if c != key]])


def _store(cfg) -> dict[str, pa.Table]:
    return {name: _sorted(store.read_table(cfg.store, name, ODS), store.KEYS[name]) for name in TABLES}


def _fresh_home(tmp_path, monkeypatch, cfg, name):
    monkeypatch.setenv("GPDATA_HOME", str(tmp_path / name))
    monkeypatch.setenv("GPDATA_INBOX_ROOT", str(tmp_path))  # deliveries beside the fresh home
    (tmp_path / name / "reference").mkdir(parents=True)
    (tmp_path / name / "reference" / "postcode_lsoa.csv").write_bytes(cfg.postcode_lookup.read_bytes())
    return settings.load()


# --- the shipped research-database-style dialect ---------------------------------------------------------------

def test_research_tab_is_configuration_only_and_reads_what_it_carries(generated, tmp_path):
    canonical = exports.canonical_of(generated, ODS)
    d = load_dialect("research_tab")
    assert "research_tab" in known_dialects() and d.delimiter == "\t" and d.deleted is None
    paths = exports.export_flatfile(generated, tmp_path / "rt", ODS, "research_tab")
    assert {p.parent.name for p in paths} == {"Extract_20260101"} and all(ODS not in p.name for p in paths)
    header = paths[0].read_text().splitlines()[0].replace('"', "").split("\t")
    assert "yob" in header and "pracid" in header  # year of birth only; more columns than the model
    unmapped: dict = {}
    for f in list_files(tmp_path / "rt", d, ODS):
        got = read_file(f, d, ODS, unmapped)
        want = canonical[f.table]
        fields = d.tables[f.table].fields
        carried = [c for c in got.column_names if (c in fields and fields[c].year is None) or c == "code_system"]
        assert got.select(carried).equals(want.select(carried)), f.table
        if f.table == "patients":  # the first of July of the year of birth
            years = pc.year(want["birth_date"])
            assert got["birth_date"].to_pylist() == [dt.date(y, 7, 1) if y else None for y in years.to_pylist()]
        if f.table == "observations":  # codes through the supplier's dictionary, others from their own columns
            import pyarrow.csv as pacsv

            raw = pacsv.read_csv(f.path, parse_options=pacsv.ParseOptions(delimiter="\t"),
                                 convert_options=pacsv.ConvertOptions(strings_can_be_null=True,
                                                                      column_types={"medcodeid": pa.string()}))
            for column in ("medcodeid", "snomedctconceptid", "ctv3code"):
                assert raw[column].null_count < raw.num_rows, column
    assert unmapped == {t: {"pracid", "extractdate"} for t in d.tables}


def test_research_tab_practice_gives_the_fhir_store_where_the_format_carries_the_fields(generated, home, tmp_path,
                                                                                        monkeypatch):
    cfg = settings.load()
    fhir = pipeline.run_practice(_feed("fhir", generated), cfg, "fhir", today=TODAY)
    from_fhir = _store(cfg)
    rt_cfg = _fresh_home(tmp_path, monkeypatch, cfg, "rt_home")
    exports.export_flatfile(generated, tmp_path / "rt", ODS, "research_tab")
    got = pipeline.run_practice(_feed("flatfile", tmp_path / "rt", dialect="research_tab"), rt_cfg, "rt", today=TODAY)
    assert got["status"] == "committed"
    carried = load_dialect("research_tab").tables
    for key, value in fhir["type1_optout"].items():
        if key == "records_excluded":
            assert {t: n for t, n in got["type1_optout"][key].items() if t in carried} == \
                {t: n for t, n in value.items() if t in carried}
        else:
            assert got["type1_optout"][key] == value, key
    assert got["source"]["unmapped_columns"] == {t: ["extractdate", "pracid"] for t in load_dialect(
        "research_tab").tables}
    from_rt = _store(rt_cfg)
    d = load_dialect("research_tab")
    # patients: all but the birth month (the first of July of the year of birth) and the date-of-birth pseudonym
    pat_f, pat_r = from_fhir["patients"], from_rt["patients"]
    same = [c for c in pat_f.column_names if c not in ("birth_month", "dob_pid")]
    assert pat_r.select(same).equals(pat_f.select(same))
    assert pc.all(pc.equal(pc.year(pat_r["birth_month"]), pc.year(pat_f["birth_month"]))).as_py()
    assert set(pc.month(pat_r["birth_month"]).to_pylist()) == {7}
    # events: identical, except records in a patient's year of birth, which the quality gate judges against the
    # first of July rather than the true birth month
    born = dict(zip(pat_f["patient_pid"].to_pylist(), pc.year(pat_f["birth_month"]).to_pylist(), strict=True))
    for name in TABLES[1:]:
        f, r = from_fhir[name], from_rt[name]
        if name not in d.tables:
            assert r.num_rows == 0 and f.num_rows > 0, name
            continue
        if name == "practitioners":
            assert r.equals(f), name
            continue
        keep = lambda t: t.filter(pa.array([  # noqa: E731
            born.get(p) != (e.year if e else None) for p, e in zip(t["patient_pid"].to_pylist(),
                                                                    t["event_date"].to_pylist(), strict=True)]))
        assert keep(r).equals(keep(f)), name
        assert r.num_rows >= 0.95 * f.num_rows, name


def test_research_tab_refuses_an_incremental_feed(tmp_path):
    with pytest.raises(ValueError, match="delivers full snapshots without a deletion column: mode must be baseline"):
        _feed("flatfile", tmp_path, dialect="research_tab", mode="incremental")


def test_optional_table_may_be_missing_and_a_required_one_may_not(generated, tmp_path):
    d = load_dialect("research_tab")
    paths = {p.name: p for p in exports.export_flatfile(generated, tmp_path / "rt", ODS, "research_tab")}
    paths["Referral.txt"].unlink()
    feed = _feed("flatfile", tmp_path / "rt", dialect="research_tab")
    from gpdata.ingest.sources import check_sample

    counts = check_sample(feed, tmp_path / "rt")
    assert "referrals" not in counts and counts["patients"] == 60
    paths["Immunisation.txt"].unlink()
    with pytest.raises(SourceError, match="incomplete: no file for immunisations"):
        check_sample(feed, tmp_path / "rt")
    assert d.tables["referrals"].optional


def _copy_dialect(tmp_path, base="research_tab", **changes) -> Path:
    """A dialect copied into a GPDATA_DIALECTS_DIR folder (with its look-up), under a new name, with changes."""
    own = tmp_path / "dialects"
    (own / "lookups").mkdir(parents=True, exist_ok=True)
    shutil.copy(SHIPPED / "lookups" / "research_tab_medical.txt", own / "lookups")
    doc = yaml.safe_load((SHIPPED / f"{base}.yaml").read_text())
    new = changes.pop("name", "own_" + base)
    doc.update(name=new, **changes)
    (own / f"{new}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return own / f"{new}.yaml"


def test_value_map_and_lookup_errors_name_column_and_row_never_the_value(generated, tmp_path):
    d = load_dialect("research_tab")
    exports.export_flatfile(generated, tmp_path / "rt", ODS, "research_tab")
    patient = tmp_path / "rt" / "Extract_20260101" / "Patient.txt"
    lines = patient.read_text().splitlines(keepends=True)
    lines[3] = lines[3].replace('\t"2"\t', '\t"X7Q"\t', 1).replace('\t"1"\t', '\t"X7Q"\t', 1)
    patient.write_text("".join(lines))
    f = next(f for f in list_files(tmp_path / "rt", d, ODS) if f.table == "patients")
    with pytest.raises(SourceError) as err:
        read_file(f, d, ODS)
    assert "column gender: a value not in the dialect's value map" in str(err.value)
    assert "row 3" in str(err.value) and "X7Q" not in str(err.value)
    assert "Extract_20260101/Patient.txt" in str(err.value)
    obs = tmp_path / "rt" / "Extract_20260101" / "Observation.txt"
    text = obs.read_text()
    first = text.splitlines()[1].split("\t")[4]
    obs.write_text(text.replace(first, '"424242"', 1))
    f = next(f for f in list_files(tmp_path / "rt", d, ODS) if f.table == "observations")
    with pytest.raises(SourceError, match="column medcodeid: an id not in the lookup medical") as err:
        read_file(f, d, ODS)
    assert "424242" not in str(err.value) and "row 1" in str(err.value)


# --- validation of each feature, naming the file and the field ------------------------------------------------

BAD = [
    ({"file_name": "{practice}_{source}.txt", "stamp_from": None}, "set stamp_from to folder or modified"),
    ({"stamp_format": "%Y%j"}, "field 'stamp_format'"),
    ({"delivers": None}, "say what a delivery holds"),
    ({"unmapped_columns": "keep"}, "field 'unmapped_columns'"),
    ({"folder_name": "Extract"}, "folder_name must contain {stamp}"),
    ({"tables.patients.columns.gender": {"column": "gender", "values": {"1": "man"}}},
     "table patients, field gender: values must map to male, female, other, unknown"),
    ({"tables.patients.columns.gp_ref": {"year": "yob"}}, "table patients, field gp_ref: year/month derive dates"),
    ({"tables.patients.columns.birth_date": {"year": "yob", "column": "dob"}}, "give exactly one of column"),
    ({"tables.observations.columns.code": [{"column": "medcodeid", "lookup": "nope", "system": "snomed"}]},
     "lookup 'nope' is not declared"),
    ({"tables.observations.columns.code": [{"column": "medcodeid", "lookup": "medical"}]},
     "table observations: the code system comes from exactly one of"),
    ({"tables.medications.code_system": "icd10"}, "field 'tables.medications.code_system'"),
    ({"tables.patients.optional": True}, "table patients: cannot be optional"),
    ({"tables.observations": None}, "with patients and observations; missing observations"),
    ({"tables.immunisations.snapshot": True}, "snapshot is for sql dialects"),
]


@pytest.mark.parametrize("change, message", BAD)
def test_a_wrong_dialect_feature_is_named_with_the_file(tmp_path, monkeypatch, change, message):
    path = _copy_dialect(tmp_path)
    doc = yaml.safe_load(path.read_text())
    for key, value in change.items():
        *parents, last = key.split(".")
        target = doc
        for p in parents:
            target = target[p]
        if value is None:
            target.pop(last, None)
        else:
            target[last] = value
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    monkeypatch.setenv("GPDATA_DIALECTS_DIR", str(path.parent))
    with pytest.raises(ConfigError) as err:
        load_dialect(path.stem)
    assert path.name in str(err.value) and message in str(err.value), str(err.value)


# --- dialects from outside the code tree -------------------------------------------------------------------------

def test_dialects_dir_by_name_and_by_path_and_nothing_outside(tmp_path, monkeypatch):
    path = _copy_dialect(tmp_path)
    monkeypatch.setenv("GPDATA_DIALECTS_DIR", str(path.parent))
    assert load_dialect("own_research_tab").source_file == path.resolve()
    assert load_dialect("own_research_tab.yaml").name == "own_research_tab"
    feed = _feed("flatfile", tmp_path, dialect="own_research_tab.yaml")
    assert feed.dialect == "own_research_tab.yaml"
    elsewhere = tmp_path / "elsewhere.yaml"
    elsewhere.write_text(path.read_text())
    with pytest.raises(ConfigError, match="outside the dialect folders"):
        load_dialect(str(elsewhere))
    with pytest.raises(ValueError, match="outside the dialect folders"):
        _feed("flatfile", tmp_path, dialect=str(elsewhere))
    _copy_dialect(tmp_path, "emis_csv", name="emis_csv")
    with pytest.raises(ConfigError, match="dialect emis_csv is defined twice"):
        load_dialect("emis_csv")


def test_stamp_from_the_files_modified_time(generated, tmp_path, monkeypatch):
    path = _copy_dialect(tmp_path, stamp_from="modified")
    monkeypatch.setenv("GPDATA_DIALECTS_DIR", str(path.parent))
    d = load_dialect("own_research_tab")
    written = exports.export_flatfile(generated, tmp_path / "mt", ODS, "own_research_tab", stamp="20260203040506")
    assert all(p.parent == tmp_path / "mt" for p in written)
    files = list_files(tmp_path / "mt", d, ODS)
    assert {f.stamp for f in files} == {"20260203040506"} and len(files) == len(d.tables)


# --- the command line ----------------------------------------------------------------------------------------

def test_cli_dialects_list_validate_show(tmp_path, monkeypatch, capsys):
    path = _copy_dialect(tmp_path)
    monkeypatch.setenv("GPDATA_DIALECTS_DIR", str(path.parent))
    assert cli.main(["dialects", "list"]) == 0
    out = capsys.readouterr().out
    assert "research_tab" in out and "own_research_tab" in out and "GPDATA_DIALECTS_DIR" in out
    assert cli.main(["dialects", "validate"]) == 0
    assert cli.main(["dialects", "show", "research_tab"]) == 0
    shown = capsys.readouterr().out
    assert "medcodeid" in shown and "reads:" in shown
    doc = yaml.safe_load(path.read_text())
    doc["tables"]["patients"]["columns"]["birth_date"] = {"year": "yob", "month": None, "column": "x"}
    path.write_text(yaml.safe_dump(doc))
    assert cli.main(["dialects", "validate", "own_research_tab"]) == 2
    assert "own_research_tab.yaml" in capsys.readouterr().err


def test_feeds_add_checks_the_dialect_and_a_sample(generated, tmp_path, monkeypatch, capsys):
    feeds = tmp_path / "feeds_dir"
    exports.export_flatfile(generated, tmp_path / "rt", ODS, "research_tab")
    args = ["feeds", "add", "--dir", str(feeds), "--ods-code", ODS, "--name", "Research", "--format", "flatfile",
            "--location", str(tmp_path / "rt")]
    # an invalid dialect in GPDATA_DIALECTS_DIR: refused, nothing written
    path = _copy_dialect(tmp_path)
    doc = yaml.safe_load(path.read_text())
    doc["tables"]["observations"]["columns"]["code"][0]["lookup"] = "missing"
    path.write_text(yaml.safe_dump(doc))
    monkeypatch.setenv("GPDATA_DIALECTS_DIR", str(path.parent))
    assert cli.main([*args, "--dialect", "own_research_tab"]) == 2
    assert "lookup 'missing' is not declared" in capsys.readouterr().err and not feeds.exists()
    # a sample that does not read: refused, nothing written
    assert cli.main([*args, "--dialect", "emis_csv", "--check-sample", str(tmp_path / "rt")]) == 2
    assert "not a file of the emis_csv dialect" in capsys.readouterr().err and not feeds.exists()
    # the right dialect and its sample: written
    assert cli.main([*args, "--dialect", "research_tab", "--check-sample", str(tmp_path / "rt")]) == 0
    out = capsys.readouterr().out
    assert "patients 60" in out and (feeds / f"{ODS}.yaml").exists()
    assert load_feeds(feeds)[0].dialect == "research_tab"
    assert os.environ["GPDATA_DIALECTS_DIR"] == str(path.parent)
