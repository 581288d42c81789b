"""The leak check every scenario ends with is not vacuous: it finds an identifier wherever one lands."""

import json

import pytest

from tests.reliability.conftest import assert_no_leaks


def _an_identifier(home):
    bundle = sorted((home.root / "sources").rglob("*.json"))[0]
    doc = json.loads(bundle.read_text())
    patient = next(e["resource"] for e in doc["entry"] if e["resource"]["resourceType"] == "Patient")
    return patient["identifier"][0]["value"], f"{patient['name'][0]['given'][0]} {patient['name'][0]['family']}"


def test_the_clean_golden_run_passes(use_home):
    assert assert_no_leaks(use_home("committed")) > 500  # identifier forms searched


@pytest.mark.parametrize("where", ["manifest", "log", "error", "worker output"])
def test_an_identifier_anywhere_fails_the_check(where, use_home):
    home = use_home("committed")
    nhs, name = _an_identifier(home)
    texts, errors = {}, []
    if where == "manifest":
        path = next((home.root / "store" / "_manifests").rglob("latest.json"))
        path.write_text(path.read_text().replace('"practice"', f'"note": "{nhs}", "practice"', 1))
    elif where == "log":
        texts["log"] = f"INFO gpdata.pipeline: could not match {name}"
    elif where == "error":
        errors.append(ValueError(f"bad row for patient {nhs[:3]} {nhs[3:6]} {nhs[6:]}"))
    else:
        home.texts["worker"] = f"Traceback ...\nKeyError: '{name}'"
    with pytest.raises(AssertionError, match="nhs_number|name"):
        assert_no_leaks(home, texts=texts, errors=errors)
