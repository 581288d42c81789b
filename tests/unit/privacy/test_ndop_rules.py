"""The National Data Opt-out list's checks at their boundaries (issue 23: every mutant of a guard is caught):
publication date, age, invalid share, shrink, the key it was made with, and what is kept or deleted."""

import datetime as dt

import pytest

from gpdata import settings
from gpdata.errors import ConfigError, GpdataError
from gpdata.privacy import keys, ndop
from gpdata.privacy.nhsnumber import check_digit

TODAY = dt.date(2026, 6, 1)
NUMBERS = [n for n in (f"999000{i:03d}" for i in range(200)) if check_digit(n) is not None][:20]
NUMBERS = [n + str(check_digit(n)) for n in NUMBERS]
RULES = ndop.Policy(max_age_days=10, max_invalid_fraction=0.25, max_drop_fraction=0.1)


def _file(home, numbers, name="ndop.csv"):
    path = home / name
    path.write_text("nhs_number\n" + "".join(f"{n}\n" for n in numbers))
    return path


def _ingest(home, numbers, published, name="ndop.csv", **kw):
    cfg = settings.load()
    return ndop.ingest(_file(home, numbers, name), cfg.store, keys.load_master_key(), published=published,
                       today=TODAY, rules=RULES, **kw)


def test_the_publication_date_may_be_today_or_up_to_the_maximum_age(home):
    _ingest(home, NUMBERS[:4], TODAY)
    with pytest.raises(ConfigError, match="in the future"):
        _ingest(home, NUMBERS[:4], TODAY + dt.timedelta(days=1), "next.csv")
    cfg = settings.load()
    ndop.ingest(_file(home, NUMBERS[:4], "b.csv"), cfg.store, keys.load_master_key(), published=TODAY,
                today=TODAY + dt.timedelta(days=10), rules=RULES)  # exactly the maximum age
    with pytest.raises(ConfigError, match="11 days ago"):
        ndop.ingest(_file(home, NUMBERS[:4], "c.csv"), cfg.store, keys.load_master_key(), published=TODAY,
                    today=TODAY + dt.timedelta(days=11), rules=RULES)


def test_a_list_older_than_the_one_in_force_is_refused_and_nothing_changes(home):
    first = _ingest(home, NUMBERS[:4], TODAY - dt.timedelta(days=2))
    older = _file(home, NUMBERS[:4], "older.csv")
    with pytest.raises(ConfigError, match="before the list in force") as caught:
        ndop.ingest(older, settings.load().store, keys.load_master_key(), published=TODAY - dt.timedelta(days=3),
                    today=TODAY, rules=RULES)
    assert caught.value.file == str(older) and older.exists()
    assert ndop.current(settings.load().store) == first
    _ingest(home, NUMBERS[:4], TODAY - dt.timedelta(days=2), "same.csv")  # the same date is no older


def test_the_share_of_invalid_rows_may_reach_the_maximum_but_not_pass_it(home):
    meta = _ingest(home, [*NUMBERS[:3], "9.99E+09"], TODAY)  # 1 of 4 invalid: 25%, the maximum
    assert meta["patients"] == 3 and meta["invalid_rows_dropped"] == 1
    with pytest.raises(ConfigError, match=r"1 of 3 rows \(33.33%\) are not valid"):
        _ingest(home, [*NUMBERS[:2], "9.99E+09"], TODAY, "worse.csv")
    with pytest.raises(ConfigError, match=r"no valid NHS number \(2 rows\)"):
        _ingest(home, ["9.99E+09", "x"], TODAY, "none.csv")


def test_the_list_may_shrink_by_the_maximum_but_not_more(home):
    cfg, key = settings.load(), keys.load_master_key()
    rules = ndop.Policy(max_age_days=10, max_invalid_fraction=0, max_drop_fraction=0.25)
    ndop.ingest(_file(home, NUMBERS[:8]), cfg.store, key, published=TODAY - dt.timedelta(days=2), today=TODAY,
                rules=rules)
    with pytest.raises(ConfigError, match=r"a drop of 37.5%"):
        ndop.ingest(_file(home, NUMBERS[:5], "shrunk.csv"), cfg.store, key, published=TODAY, today=TODAY,
                    rules=rules)
    fine = ndop.ingest(_file(home, NUMBERS[:6], "fine.csv"), cfg.store, key, published=TODAY, today=TODAY,
                       rules=rules)
    assert fine["patients"] == 6  # a drop of exactly 25%, the maximum


def test_the_policy_comes_from_its_file_or_the_defaults(tmp_path):
    path = tmp_path / "ndop.yaml"
    path.write_text("max_age_days: 20\nmax_drop_fraction: 0.5\n")
    assert (ndop.policy(path).max_age_days, ndop.policy(path).max_drop_fraction) == (20, 0.5)
    assert ndop.policy(tmp_path / "none.yaml") == ndop.Policy()


def test_an_accepted_list_replaces_the_old_one_and_its_identifiable_file_is_deleted(home):
    cfg = settings.load()
    first = _ingest(home, NUMBERS[:4], TODAY - dt.timedelta(days=1), "first.csv")
    second = _ingest(home, NUMBERS[1:5], TODAY, "second.csv")
    folder = ndop.ndop_dir(cfg.store)
    assert sorted(p.name for p in folder.glob("*.parquet")) == [second["file"]] != [first["file"]]
    assert not (home / "first.csv").exists() and not (home / "second.csv").exists()
    pids, meta = ndop.load(cfg.store, TODAY, 10, key=keys.load_master_key())
    assert len(pids) == 4 and meta == second


def test_a_list_without_the_column_or_missing_is_refused(home):
    cfg = settings.load()
    bad = home / "bad.csv"
    bad.write_text("nhs\n9990000018\n")
    with pytest.raises(ConfigError, match="needs a column nhs_number"):
        ndop.ingest(bad, cfg.store, keys.load_master_key(), published=TODAY, today=TODAY)
    with pytest.raises(ConfigError, match="does not exist"):
        ndop.ingest(home / "nowhere.csv", cfg.store, keys.load_master_key(), published=TODAY, today=TODAY)


def test_loading_counts_age_from_publication_and_checks_the_key(home):
    cfg = settings.load()
    with pytest.raises(GpdataError, match="no National Data Opt-out list"):
        ndop.load(cfg.store, TODAY)
    _ingest(home, NUMBERS[:4], TODAY - dt.timedelta(days=5))
    assert len(ndop.load(cfg.store, TODAY + dt.timedelta(days=5), 10)[0]) == 4  # exactly 10 days old
    with pytest.raises(GpdataError, match="11 days old"):
        ndop.load(cfg.store, TODAY + dt.timedelta(days=6), 10)
    other = keys.MasterKey(ring=(("v1", bytes(range(32))),), development=False)
    with pytest.raises(GpdataError, match="not the key the National Data Opt-out list was made with"):
        ndop.load(cfg.store, TODAY, 10, key=other)


def test_rekeying_brings_the_list_to_the_current_version_once(home):
    cfg = settings.load()
    assert ndop.rekey(cfg.store, keys.load_master_key()) == "no list"
    _ingest(home, NUMBERS[:4], TODAY)
    key = keys.load_master_key()
    assert ndop.rekey(cfg.store, key) == "already v1"
    ring = keys.MasterKey(ring=(*key.ring, ("v2", bytes(range(100, 132)))), development=False)
    assert ndop.rekey(cfg.store, ring) == "v1 -> v2 (4 patients)"
    pids, meta = ndop.load(cfg.store, TODAY, 10, key=ring)
    assert meta["key_version"] == "v2" and len(pids) == 4
    assert [p.name for p in ndop.ndop_dir(cfg.store).glob("*.parquet")] == [meta["file"]]
    with pytest.raises(GpdataError, match="key version v2, which the key ring does not hold"):
        ndop.rekey(cfg.store, keys.MasterKey(ring=(("v3", bytes(range(50, 82))),), development=False))
    wrong = keys.MasterKey(ring=(("v1", bytes(range(1, 33))), ("v2", bytes(range(2, 34))), ("v3", bytes(32))),
                           development=False)
    with pytest.raises(GpdataError, match="not the key the National Data Opt-out list was made with"):
        ndop.rekey(cfg.store, wrong)
