"""A feed's location must lie under the inbox root (GPDATA_INBOX_ROOT, default GPDATA_HOME) and in none of
gpdata's own folders; the extraction refuses it, naming the feed, before anything is read."""

import pytest

from gpdata import pipeline, settings
from gpdata.errors import ConfigError
from gpdata.ingest.feeds import Feed, check_location, load_feed
from tests import factory as f


def _yaml_feed(folder, location):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "A81001.yaml"
    path.write_text(f"ods_code: A81001\nname: A\nlocation: {location}\n")
    return load_feed(path)


def test_locations_outside_the_inbox_root_or_in_gpdata_folders_are_refused_naming_the_feed(home, tmp_path_factory):
    cfg = settings.load()
    outside = tmp_path_factory.mktemp("elsewhere")
    (home / "sources" / "A81001").mkdir(parents=True)
    (home / "sources" / "link").symlink_to(outside)
    refused = {"/etc": "outside the inbox root", "../../..": "outside the inbox root",
               str(outside): "outside the inbox root", "../sources/link": "outside the inbox root",
               "../state": "gpdata's own folder", "../store/observations": "gpdata's own folder",
               "..": "gpdata's own folder", "../staging/r1": "gpdata's own folder"}
    for location, why in refused.items():
        feed = _yaml_feed(home / "feeds", location)
        with pytest.raises(ConfigError, match=why) as err:
            check_location(feed, cfg.inbox, cfg.working_folders)
        assert "practice A81001" in str(err.value) and str(home / "feeds" / "A81001.yaml") in str(err.value)
    feed = _yaml_feed(home / "feeds", "../sources/A81001")
    assert check_location(feed, cfg.inbox, cfg.working_folders) == home / "sources" / "A81001"


def test_the_inbox_root_is_configurable(home, monkeypatch, tmp_path_factory):
    inbox = tmp_path_factory.mktemp("inbox")
    monkeypatch.setenv("GPDATA_INBOX_ROOT", str(inbox))
    cfg = settings.load()
    assert cfg.inbox == inbox
    check_location(Feed(ods_code="A81001", name="A", location=str(inbox / "A81001")), cfg.inbox)
    with pytest.raises(ConfigError, match="outside the inbox root"):  # GPDATA_HOME is no longer the root
        check_location(Feed(ods_code="A81001", name="A", location=str(home / "sources" / "A81001")), cfg.inbox)


def test_extraction_refuses_a_feed_outside_the_inbox_before_reading_anything(home, monkeypatch, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    f.write_bundle(outside, [f.organization("A81001")])

    def never(*args, **kwargs):
        raise AssertionError("a source was read before the location was checked")

    monkeypatch.setattr(pipeline.sources, "collect", never)
    with pytest.raises(ConfigError, match="outside the inbox root") as err:
        pipeline.extract(Feed(ods_code="A81001", name="A", location=str(outside)), settings.load(), "r1")
    assert "practice A81001" in str(err.value)
    assert not (home / "staging").exists()
