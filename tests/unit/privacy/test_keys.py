import json
import secrets

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


# --- key custody in production mode ---------------------------------------------------------------------------

PROD = {keys.MODE_ENV: "production"}


def _key_file(path, hexkey: str, mode: int = 0o600, **extra):
    path.write_text(json.dumps({"keys": [{"version": "v1", "key": hexkey}], **extra}))
    path.chmod(mode)
    return path


def test_production_refuses_the_demo_key_by_its_fingerprint_even_without_its_flag(tmp_path):
    path = tmp_path / "dev.key"
    keys.write_development_key(path)
    doc = json.loads(path.read_text())
    stripped = _key_file(tmp_path / "stripped.key", doc["keys"][0]["key"])  # no "kind": development
    assert keys.load_master_key({keys.KEY_FILE_ENV: str(stripped)}).development
    with pytest.raises(KeyConfigError, match="development key is not allowed"):
        keys.load_master_key({keys.KEY_FILE_ENV: str(stripped), **PROD})
    with pytest.raises(KeyConfigError, match="development key is not allowed"):  # nor pasted into the environment
        keys.load_master_key({keys.KEY_ENV: doc["keys"][0]["key"], **PROD})
    keys.add_key_version(path)  # a development ring stays one after rotation
    assert all(keys.is_development_key(bytes.fromhex(k["key"])) for k in json.loads(path.read_text())["keys"])


def test_production_refuses_an_all_zero_key_and_the_test_suites_key():
    from tests.conftest import TEST_KEY

    for weak, why in (("00" * 32, "all its bytes are equal"), (TEST_KEY, "published test key"),
                      ("0123456789abcdef" * 4, "repeats a pattern"),
                      (b"correct horse battery staple 42!".hex(), "printable"),
                      (bytes(range(100, 132)).hex(), "sequence")):
        assert keys.load_master_key({keys.KEY_ENV: weak}).version == "v1"  # development mode: accepted
        with pytest.raises(KeyConfigError, match=why) as err:
            keys.load_master_key({keys.KEY_ENV: weak, **PROD})
        assert weak not in str(err.value)


def test_production_refuses_a_key_file_readable_by_group_or_others(tmp_path):
    good = secrets.token_hex(32)
    for mode in (0o644, 0o640, 0o604, 0o660):
        path = _key_file(tmp_path / f"k{mode:o}.key", good, mode)
        with pytest.raises(KeyConfigError, match=f"mode {mode:04o}.*chmod 600"):
            keys.load_master_key({keys.KEY_FILE_ENV: str(path), **PROD})
        assert keys.load_master_key({keys.KEY_FILE_ENV: str(path)}).version == "v1"  # development mode: accepted
    path = _key_file(tmp_path / "ok.key", good, 0o600)
    key = keys.load_master_key({keys.KEY_FILE_ENV: str(path), **PROD})
    assert not key.development and key.version == "v1"
    assert keys.load_master_key({keys.KEY_FILE_ENV: str(_key_file(tmp_path / "r.key", good, 0o400)), **PROD})


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 255), st.integers(32, 64))
def test_a_key_of_one_repeated_byte_is_always_weak(byte, length):
    assert keys.weakness(bytes([byte]) * length)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=16), st.integers(32, 64))
def test_a_repeated_short_pattern_is_always_weak(pattern, length):
    assert keys.weakness((pattern * length)[:length])


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=32, max_size=64))
def test_a_typed_passphrase_is_always_weak(phrase):
    assert keys.weakness(phrase.encode())


def test_random_keys_are_never_weak_nor_development_keys():
    for _ in range(5000):
        material = secrets.token_bytes(32)
        assert keys.weakness(material) is None and not keys.is_development_key(material)
    for _ in range(200):
        material = keys.development_key_material()
        assert keys.is_development_key(material) and keys.weakness(material) is None


def test_the_cli_makes_a_production_key_file_that_production_accepts_and_rotates_it(tmp_path, capsys):
    from gpdata.ops.cli import main

    path = tmp_path / "custody" / "master.key"
    assert main(["keys", "new", "--key-file", str(path)]) == 0
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)
    key = keys.load_master_key({keys.KEY_FILE_ENV: str(path), **PROD})
    assert not key.development and key.versions == ["v1"]
    assert main(["keys", "new", "--key-file", str(path)]) != 0
    assert "never overwritten" in capsys.readouterr().err
    assert main(["keys", "add-version", "--key-file", str(path)]) == 0
    assert keys.load_master_key({keys.KEY_FILE_ENV: str(path), **PROD}).versions == ["v1", "v2"]
    out = capsys.readouterr().out
    assert "v2" in out and json.loads(path.read_text())["keys"][0]["key"] not in out


def test_the_demo_keeps_its_key_outside_gpdata_home(tmp_path, monkeypatch):
    from gpdata import settings as gp_settings

    monkeypatch.delenv("GPDATA_SECRETS_DIR", raising=False)
    cfg = gp_settings.load({"GPDATA_HOME": str(tmp_path / "var")})
    assert cfg.secrets == gp_settings.CHECKOUT_DIR / ".secrets" and not cfg.secrets.is_relative_to(cfg.home)
    assert ".secrets/" in (gp_settings.CHECKOUT_DIR / ".gitignore").read_text().split()
    from gpdata.ops import demo

    inside = gp_settings.load({"GPDATA_HOME": str(tmp_path), "GPDATA_SECRETS_DIR": str(tmp_path / "secrets")})
    with pytest.raises(SystemExit, match="inside GPDATA_HOME"):
        demo.prepare(inside, demo.DEMO)
