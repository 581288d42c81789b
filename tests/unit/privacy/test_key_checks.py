"""The key ring's checks, pinned one decision at a time (issue 23): a store made with another key, an
unfinished rotation, a store not brought to the current version, key versions out of order, and the weak-key
rules at their boundaries."""

import json
import random

import pytest

from gpdata import storage
from gpdata.errors import KeyConfigError
from gpdata.privacy import keys

K1, K2, OTHER = bytes(range(32)), bytes(range(100, 132)), bytes(range(1, 33))


def _ring(*entries):
    return keys.MasterKey(ring=tuple(entries), development=False)


def test_each_version_derives_under_its_own_label():
    assert _ring(("v1", K1), ("v2", K2)).derive("nhs_number", "v1") == _ring(("v1", K1)).derive("nhs_number")
    assert _ring(("v1", K1), ("v2", K2)).derive("nhs_number", "v1") != _ring(("v1", K1), ("v2", K2)).derive(
        "nhs_number")


def test_a_recorded_version_the_ring_lacks_or_a_different_key_is_refused():
    ring = _ring(("v1", K1), ("v2", K2))
    ring.verify(None, "the store")
    ring.verify(ring.checks(), "the store")
    with pytest.raises(KeyConfigError, match="key version v3, which the loaded key ring \\(v1, v2\\) does not hold"):
        ring.verify({**ring.checks(), "v3": "0" * 16}, "the store")
    wrong = _ring(("v1", K1), ("v2", OTHER)).checks()
    with pytest.raises(KeyConfigError, match="the loaded key v2 is not the key the store was made with"):
        ring.verify(wrong, "the store")


def test_the_store_refuses_another_key_an_unfinished_rotation_and_an_old_version(tmp_path):
    v1, v12 = _ring(("v1", K1)), _ring(("v1", K1), ("v2", K2))
    keys.verify_store(tmp_path, v1)  # a new store takes any key
    assert keys.store_checks(tmp_path) == {} and keys.store_version(tmp_path) is None
    keys.record_store(tmp_path, v1)
    keys.verify_store(tmp_path, v1)
    assert keys.store_checks(tmp_path) == v1.checks() and keys.store_version(tmp_path) == "v1"
    with pytest.raises(KeyConfigError, match="not the key the store was made with"):
        keys.verify_store(tmp_path, _ring(("v1", OTHER)))
    with pytest.raises(KeyConfigError, match="not brought to key version v2"):
        keys.verify_store(tmp_path, v12)
    keys.verify_store(tmp_path, v12, during_rotation=True)

    storage.write_json_atomic(keys.rotation_journal(tmp_path), {"from": "v1", "to": "v2"})
    with pytest.raises(KeyConfigError, match=r"a key rotation \(v1 -> v2\) is unfinished"):
        keys.verify_store(tmp_path, v1)
    keys.verify_store(tmp_path, v12, during_rotation=True)


def test_the_store_is_at_its_newest_version_by_number_not_by_spelling(tmp_path):
    ring = _ring(*[(f"v{n}", bytes([n]) * 16 + K1[:16]) for n in (1, 2, 10)])
    keys.record_store(tmp_path, ring)
    assert keys.store_version(tmp_path) == "v10"


def _key_file(path, versions):
    path.write_text(json.dumps({"keys": [{"version": v, "key": (K1 if i % 2 else K2).hex()}
                                         for i, v in enumerate(versions)]}))
    path.chmod(0o600)
    return {keys.KEY_FILE_ENV: str(path)}


def test_key_versions_must_be_well_formed_and_in_order(tmp_path):
    assert keys.load_master_key(_key_file(tmp_path / "k", ["v1", "v2"])).versions == ["v1", "v2"]
    with pytest.raises(KeyConfigError, match="out of order"):
        keys.load_master_key(_key_file(tmp_path / "k", ["v2", "v1"]))
    with pytest.raises(KeyConfigError, match="is not of the form v1"):
        keys.load_master_key(_key_file(tmp_path / "k", ["v1", "x2"]))


@pytest.mark.parametrize("doc", [{"version": "v1"}, {"keys": "v1"}, ["keys"]])
def test_a_file_that_is_not_a_key_file_is_refused(tmp_path, doc):
    path = tmp_path / "k"
    path.write_text(json.dumps(doc))
    with pytest.raises(KeyConfigError, match="is not a gpdata key file"):
        keys.read_key_file(path)


def test_key_files_are_made_in_new_folders_and_a_concurrent_one_is_kept(tmp_path, monkeypatch):
    keys.write_key_file(tmp_path / "a" / "b" / "prod.key")
    assert keys.write_development_key(tmp_path / "c" / "d" / "dev.key")
    assert len(keys.load_master_key({keys.KEY_FILE_ENV: str(tmp_path / "a" / "b" / "prod.key")}).versions) == 1

    def raced(*args, **kwargs):
        raise FileExistsError

    monkeypatch.setattr(keys.os, "open", raced)
    assert keys.write_development_key(tmp_path / "e.key") is False


def test_only_a_key_of_the_development_length_and_tag_is_a_development_key():
    made = keys.development_key_material()
    assert keys.is_development_key(made)
    assert not keys.is_development_key(made + made)
    assert not keys.is_development_key(made[:-1])
    assert not keys._is_development_hex("not hex")  # add_key_version: an unreadable entry makes no development ring


def _bytes_from(values, n=32, seed=3):
    rng = random.Random(seed)
    out = list(values) + [rng.choice(values) for _ in range(n - len(values))]
    rng.shuffle(out)
    return bytes(out)


def test_the_weak_key_rules_at_their_boundaries():
    distinct15 = _bytes_from(range(0x80, 0x8F))
    assert keys.weakness(distinct15) == "it has only 15 distinct byte values"
    assert keys.weakness(_bytes_from(range(0x80, 0x90))) is None  # 16 distinct values: enough
    assert keys.weakness(_bytes_from(range(0x80, 0x8F), n=31)) is None  # short keys are refused elsewhere
    printable = _bytes_from(range(0x41, 0x5B))
    assert keys.weakness(printable) == "it is printable text (a passphrase), not random bytes"
    assert keys.weakness(printable[:-1] + b"\x7f") is None  # DEL is no printable character


def test_a_new_version_is_numbered_after_the_well_formed_ones(tmp_path):
    path = tmp_path / "k"
    path.write_text(json.dumps({"keys": [{"version": "v1", "key": K2.hex()}, {"version": "x7", "key": K1.hex()}]}))
    assert keys.add_key_version(path) == "v2"


def test_the_chain_holds_the_field_keys_after_a_version_oldest_first():
    ring = _ring(("v1", K1), ("v2", K2), ("v3", OTHER))
    assert ring.chain("nhs_number") == [ring.derive("nhs_number", v) for v in ("v1", "v2", "v3")]
    assert ring.chain("nhs_number", after="v1") == [ring.derive("nhs_number", v) for v in ("v2", "v3")]
    assert ring.chain("nhs_number", after="v3") == []
