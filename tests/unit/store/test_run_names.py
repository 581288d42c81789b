"""Run ids as file and folder names: plain words kept, anything else a stem and a hash; never outside."""

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from gpdata import pipeline
from gpdata import settings as gp_settings
from gpdata.store import safe_name

SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def test_plain_words_are_kept_and_everything_else_is_hashed():
    for plain in ("r1", "manual__1", "scheduled-2024", "A" * 64):
        assert safe_name(plain) == plain
    for odd in ("..", ".", "../../etc", "/etc/passwd", "manual__2024-01-01T00:00:00+00:00", "a/b", "A" * 65, "",
                "a b", "x\x00y"):
        name = safe_name(odd)
        assert SAFE.fullmatch(name) and re.search(r"-[0-9a-f]{16}$", name), (odd, name)
    assert safe_name("..") != safe_name(".") != safe_name("")


def test_a_run_id_of_dot_dot_stages_inside_staging(tmp_path):
    cfg = gp_settings.load({"GPDATA_HOME": str(tmp_path)})
    for run_id in ("..", "../..", "../../..", "/", ".", "../state"):
        folder = pipeline.staging_dir(cfg, run_id, "A81001").resolve()
        assert folder.is_relative_to(cfg.staging) and folder.parent != cfg.staging.parent, run_id
        assert folder.parent.parent == cfg.staging


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=80))
def test_any_run_id_gives_one_safe_name_inside_its_folder(run_id):
    name = safe_name(run_id)
    assert SAFE.fullmatch(name) and len(name) <= 64 + 17 and name not in (".", "..")
    assert safe_name(run_id) == name  # stable


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30), st.text(max_size=30))
def test_distinct_run_ids_get_distinct_names(a, b):
    if a != b:
        assert safe_name(a) != safe_name(b)
