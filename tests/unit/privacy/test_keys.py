import json

import pytest

from gpdata.errors import KeyConfigError
from gpdata.privacy import keys


def test_hkdf_rfc5869_case_1():
    okm = keys.derive_key(bytes.fromhex("0b" * 22), bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"), length=42,
                          salt=bytes.fromhex("000102030405060708090a0b0c"))
    assert okm.hex() == ("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
                         "34007208d5b887185865")


def test_missing_short_and_malformed_keys_fail_closed():
    with pytest.raises(KeyConfigError, match="no pseudonymisation key"):
        keys.load_master_key({})
    with pytest.raises(KeyConfigError, match="at least 32"):
        keys.load_master_key({keys.KEY_ENV: "ab" * 16})
    with pytest.raises(KeyConfigError, match="not hexadecimal"):
        keys.load_master_key({keys.KEY_ENV: "zz" * 32})


def test_development_key_refused_in_production(tmp_path):
    path = tmp_path / "dev.key"
    assert keys.write_development_key(path)
    assert not keys.write_development_key(path)  # never overwritten
    assert json.loads(path.read_text())["kind"] == "development"
    assert keys.load_master_key({keys.KEY_FILE_ENV: str(path)}).development
    with pytest.raises(KeyConfigError, match="development key is not allowed"):
        keys.load_master_key({keys.KEY_FILE_ENV: str(path), keys.MODE_ENV: "production"})


def test_fields_get_distinct_keys_and_repr_hides_material():
    master = keys.load_master_key({keys.KEY_ENV: "11" * 32})
    derived = {f: master.derive(f) for f in keys.FIELDS}
    assert len(set(derived.values())) == len(keys.FIELDS)
    assert "11" * 8 not in repr(master) and master.version in repr(master)
