"""The privacy core end to end in the library: keyed pseudonyms, linkage, type 1 opt-out, fail-closed
keys and key rotation."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gpdata import pipeline, settings, store
from gpdata.errors import GpdataError, KeyConfigError
from gpdata.ingest.feeds import Feed
from gpdata.model import TABLES
from gpdata.privacy import keys
from gpdata.privacy.deid import Pseudonymiser, hmac_hex
from gpdata.store.rotation import rotate, rotate_store
from tests import factory as f

# RFC 4231 test cases 1-4, 6 and 7 (HMAC-SHA-256).
RFC4231 = [
    ("0b" * 20, b"Hi There", "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
    (b"Jefe".hex(), b"what do ya want for nothing?",
     "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
    ("aa" * 20, b"\xdd" * 50, "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"),
    ("0102030405060708090a0b0c0d0e0f10111213141516171819", b"\xcd" * 50,
     "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"),
    ("aa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First",
     "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
    ("aa" * 131, b"This is a test using a larger than block-size key and a larger than block-size data. "
                 b"The key needs to be hashed before being used by the HMAC algorithm.",
     "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"),
]


@pytest.mark.parametrize("key, message, digest", RFC4231)
def test_hmac_rfc4231(key, message, digest):
    out = hmac_hex(bytes.fromhex(key), pa.array([message, None, message], pa.binary()))
    assert out.to_pylist() == [digest, None, digest]


def _feed(home, ods, resources):
    f.write_bundle(home / "sources" / ods, resources)
    return Feed(ods_code=ods, name=ods, location=str(home / "sources" / ods))


def _pids(cfg, name="patients"):
    return set(store.read_table(cfg.store, name)["patient_pid"].to_pylist())


def test_same_key_links_a_patient_across_practices_and_runs(home):
    cfg = settings.load()
    a = _feed(home, "A81001", [f.organization("A81001"), f.patient("x1", "9990000018")])
    b = _feed(home, "B82002", [f.organization("B82002"), f.patient("y7", "999 000 0018")])  # moved practice
    pipeline.run_practice(a, cfg, "r1")
    pipeline.run_practice(b, cfg, "r1")
    pats = store.read_table(cfg.store, "patients").to_pylist()
    assert len(pats) == 2 and pats[0]["patient_pid"] == pats[1]["patient_pid"]
    pipeline.run_practice(a, cfg, "r2")
    assert _pids(cfg) == {pats[0]["patient_pid"]}


@pytest.mark.parametrize("system, dissent, withdrawn", [
    (f.SNOMED, f.DISSENT, f.WITHDRAWN),
    ("http://read.info/readv2", "9Nu0.", "9Nu1."),
    ("http://read.info/ctv3", "XaZ89", "XaZ8A"),
])
def test_opted_out_patient_is_in_no_table_and_withdrawn_one_is_everywhere(home, system, dissent, withdrawn):
    cfg = settings.load()
    res = [f.organization("A81001"), *f.practitioner("prac-1", "123456789012")]
    for pid, nhs in (("out", "9990000018"), ("back", "9990000026")):
        res += [f.patient(pid, nhs), f.observation(f"{pid}-bmi", pid, f.BMI, "2020-01-01", value=25.0, unit="kg/m2"),
                f.medication_issue(f"{pid}-med", pid, f.GLIMEPIRIDE, "2020-02-02"),
                f.appointment(f"{pid}-appt", pid, "2020-03-03T09:00:00+00:00"),
                f.observation(f"{pid}-d", pid, dissent, "2021-01-01", system=system)]
    res.append(f.observation("back-w", "back", withdrawn, "2022-01-01", system=system))
    counts = pipeline.run_practice(_feed(home, "A81001", res), cfg, "r1")
    pseudo = Pseudonymiser(keys.load_master_key())
    out_pid, back_pid = pseudo(pa.array(["9990000018", "9990000026"]), "nhs_number").to_pylist()
    for name in ("patients", "observations", "medications", "appointments"):
        assert out_pid not in _pids(cfg, name) and back_pid in _pids(cfg, name), name
    for path in cfg.store.rglob("*.parquet"):  # not in any file, current or old
        if "_type1" in path.parts:  # the type 1 register: the pseudonym is kept there to exclude the patient
            continue
        assert out_pid not in json.dumps(pq.read_table(path).to_pylist(), default=str)
    assert counts["type1_optout"]["patients_excluded"] == 1 and counts["type1_optout"]["patients_readmitted"] == 1


@pytest.mark.parametrize("env, message", [
    ({}, "no pseudonymisation key"),
    ({"GPDATA_MASTER_KEY": "ab" * 16}, "at least 32"),
    ({"GPDATA_MASTER_KEY_FILE": "DEVKEY", "GPDATA_MODE": "production"}, "development key is not allowed"),
])
def test_bad_key_fails_before_any_source_is_read(home, monkeypatch, env, message):
    keys.write_development_key(home / "dev.key")
    monkeypatch.delenv("GPDATA_MASTER_KEY")
    for name, value in env.items():
        monkeypatch.setenv(name, str(home / "dev.key") if value == "DEVKEY" else value)

    def never(*args, **kwargs):
        raise AssertionError("a source was read before the key was checked")

    monkeypatch.setattr(pipeline.sources, "collect", never)
    with pytest.raises(KeyConfigError, match=message) as err:
        pipeline.extract(_feed(home, "A81001", [f.organization("A81001")]), settings.load(), "r1")
    assert "practice A81001" in str(err.value)
    assert not (home / "staging").exists()


def test_rotation_rekeys_every_table_atomically_and_extraction_follows(home, monkeypatch):
    key_file = home / "ring.key"
    keys.write_development_key(key_file)
    monkeypatch.delenv("GPDATA_MASTER_KEY")
    monkeypatch.setenv("GPDATA_MASTER_KEY_FILE", str(key_file))
    cfg = settings.load()
    from tests.conftest import practice_resources

    feed = _feed(home, "A81001", practice_resources())
    pipeline.run_practice(feed, cfg, "r1")
    old_pids = _pids(cfg)
    pipeline.extract(feed, cfg, "stale", force=True)  # a batch made under v1, committed after the rotation below

    non_empty = {name for name in TABLES if store.read_table(cfg.store, name).num_rows}
    assert {"patients", "observations", "medications", "appointments"} <= non_empty
    done = rotate(cfg, keys.load_master_key, lambda: keys.add_key_version(key_file))["tables"]
    assert keys.load_master_key().versions == ["v1", "v2"]
    assert all(done[name].startswith("v1 -> v2") for name in non_empty)
    assert all(done[name] == "already v2" for name in set(TABLES) - non_empty)  # empty: nothing to re-key
    rotated = {name: store.read_table(cfg.store, name) for name in TABLES}
    for name in non_empty:
        assert set(rotated[name]["key_version"].to_pylist()) == {"v2"}, name
    assert not old_pids & _pids(cfg)
    for path in cfg.store.rglob("*.parquet"):  # old files are vacuumed: no v1 pseudonym left on disk
        assert not old_pids & set(pq.read_table(path).column("patient_pid").to_pylist()
                                   if "patient_pid" in pq.read_schema(path).names else [])

    pipeline.check(feed, cfg, "stale")
    with pytest.raises(GpdataError, match="key was rotated during the run"):
        pipeline.commit(feed, cfg, "stale")

    pipeline.run_practice(feed, cfg, "r2")  # a fresh extraction under the ring links to the rotated store
    for name, table in rotated.items():
        key = "record_id" if "record_id" in table.column_names else table.column_names[2]
        assert store.read_table(cfg.store, name).sort_by(key).equals(table.sort_by(key)), name
    assert rotate_store(cfg.store, keys.load_master_key()) == {name: "already v2" for name in TABLES}
