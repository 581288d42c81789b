import pytest

from gpdata.errors import ConfigError
from gpdata.privacy.deid import PostcodeLookup
from gpdata.share.generalise import AreaLookup


def test_postcode_lookup_reads_a_byte_order_mark_and_extra_columns_and_normalises(tmp_path):
    path = tmp_path / "pc.csv"
    path.write_bytes("\ufeffpostcode,extra,lsoa_code\nab1  2cd,x,E01000001\nZZ9 9ZZ,y,E01000002\n".encode())
    lookup = PostcodeLookup.load(path)
    assert lookup.postcodes.to_pylist() == ["AB12CD", "ZZ99ZZ"]  # normalised: upper case, no spaces
    assert lookup.lsoas.to_pylist() == ["E01000001", "E01000002"]


def test_area_lookup_keeps_codes_as_text(tmp_path):
    path = tmp_path / "areas.csv"
    path.write_text("lsoa_code,msoa_code,lad_code\n0001,0002,0003\n")
    lookup = AreaLookup.load(path)
    assert (lookup.lsoa.to_pylist(), lookup.msoa.to_pylist(), lookup.lad.to_pylist()) == (["0001"], ["0002"],
                                                                                          ["0003"])


@pytest.mark.parametrize("text, match", [
    ("postcode,lsoa\nAB1 2CD,E01\n", "postcode lookup .*needs columns postcode and lsoa_code"),
    ("postcode,lsoa_code\n\"AB1 2CD,E01\n", "postcode lookup .*cannot be read"),
])
def test_a_wrong_lookup_is_a_config_error_naming_it(tmp_path, text, match):
    path = tmp_path / "pc.csv"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        PostcodeLookup.load(path)
    with pytest.raises(ConfigError, match="postcode lookup .*missing.csv does not exist"):
        PostcodeLookup.load(tmp_path / "missing.csv")


def test_a_lookup_is_read_once_while_its_file_is_unchanged_and_again_after_any_change(tmp_path, monkeypatch):
    """Every extraction asks for the postcode lookup: it is read once per process, but a replacement of the same
    size with its modification time set back is read again (the file's inode and change time say so)."""
    import os

    from gpdata import storage
    from gpdata.privacy import deid

    path = tmp_path / "pc.csv"
    path.write_text("postcode,lsoa_code\nAB1 2CD,E01000001\n")
    settled = os.stat(path).st_mtime_ns
    monkeypatch.setattr(storage, "SETTLED_NS", 0)  # the file's change time counts as settled at once
    reads = []
    read = deid.read_lookup
    monkeypatch.setattr(deid, "read_lookup", lambda *args: (reads.append(1), read(*args))[1])
    first = PostcodeLookup.load(path)
    assert PostcodeLookup.load(path) is first and len(reads) == 1
    replacement = tmp_path / "new.csv"
    replacement.write_text("postcode,lsoa_code\nAB1 2CD,E01000009\n")
    os.utime(replacement, ns=(settled, settled))
    os.replace(replacement, path)
    assert PostcodeLookup.load(path).lsoas.to_pylist() == ["E01000009"] and len(reads) == 2
    monkeypatch.setattr(storage, "SETTLED_NS", 10**18)  # just changed: never remembered
    path.write_text("postcode,lsoa_code\nAB1 2CD,E01000007\n")
    assert PostcodeLookup.load(path).lsoas.to_pylist() == ["E01000007"]
    assert PostcodeLookup.load(path).lsoas.to_pylist() == ["E01000007"] and len(reads) == 4
