import hashlib
import os
import shutil
from pathlib import Path

import pytest

from tests import factory as f

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto`: two test processes per core, at most 4. The slow tests mostly wait on Airflow processes
    they started (polling, start-up), so one process per core leaves the cores half idle."""
    return min(4, 2 * (os.cpu_count() or 1))


TEST_KEY = "5a" * 32
CHECKOUT = Path(__file__).resolve().parents[1]
STATE_IN_CHECKOUT = (".secrets", "var")  # what a test must never create in the checkout (make demo does)


def pytest_sessionstart(session) -> None:
    session.config._gpdata_state_before = {n for n in STATE_IN_CHECKOUT if (CHECKOUT / n).exists()}


def pytest_sessionfinish(session, exitstatus) -> None:
    """The whole run (not each xdist worker) fails if a test left a key folder or a home in the checkout."""
    if hasattr(session.config, "workerinput"):
        return
    made = sorted({n for n in STATE_IN_CHECKOUT if (CHECKOUT / n).exists()} - session.config._gpdata_state_before)
    if made:
        print(f"\ntests wrote into the checkout: {', '.join(made)} (a test's environment lost GPDATA_HOME or "
              "GPDATA_SECRETS_DIR)")
        session.exitstatus = 1


@pytest.fixture(scope="session", autouse=True)
def _no_state_in_the_checkout(tmp_path_factory):
    """Tests never write into the checkout: by default (before a test's own `home`) GPDATA_HOME and the
    secrets folder (dev keys, the development audit key) are temporary folders of the test session."""
    mp = pytest.MonkeyPatch()
    mp.setenv("GPDATA_HOME", str(tmp_path_factory.mktemp("default_home")))
    mp.setenv("GPDATA_SECRETS_DIR", str(tmp_path_factory.mktemp("secrets")))
    yield
    mp.undo()


def use_home(mp: pytest.MonkeyPatch, home: Path) -> None:
    """Point gpdata at ``home`` (its feeds folder, its store) with the test key, outside production mode."""
    mp.setenv("GPDATA_HOME", str(home))
    mp.setenv("GPDATA_FEEDS_DIR", str(home / "feeds"))
    mp.delenv("GPDATA_STORE", raising=False)
    mp.delenv("GPDATA_MASTER_KEY_FILE", raising=False)
    mp.delenv("GPDATA_MODE", raising=False)
    mp.setenv("GPDATA_MASTER_KEY", TEST_KEY)


def built_once(tmp_path_factory, subject: str, test_file: str, build) -> tuple[Path, str]:
    """A home whose store ``build(home)`` makes once per test module (returning a release id). Under ``make
    mutate`` (GPDATA_MUTATE_CACHE set) it is kept between mutants, keyed by every source file that builds it:
    all of include/ except ``subject``, the module being mutated, whose tests exercise it but which the build
    never runs; so a mutant of any other file builds a new one."""
    cached = None
    if os.environ.get("GPDATA_MUTATE_CACHE"):
        digest = hashlib.sha256()
        sources = sorted(p for p in (CHECKOUT / "include").rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        for path in [*sources, CHECKOUT / "tests" / "factory.py", Path(__file__), Path(test_file)]:
            if path.relative_to(CHECKOUT).as_posix() != subject:
                digest.update(str(path.relative_to(CHECKOUT)).encode() + b"\0" + path.read_bytes())
        cached = Path(os.environ["GPDATA_MUTATE_CACHE"]) / f"{Path(test_file).stem}-{digest.hexdigest()[:16]}"
        if (cached / "release_id").exists():
            return cached, (cached / "release_id").read_text()
    home = tmp_path_factory.mktemp("template")
    with pytest.MonkeyPatch.context() as mp:
        use_home(mp, home)
        rid = build(home)
    if cached is None:
        return home, rid
    (home / "release_id").write_text(rid)
    shutil.copytree(home, cached, dirs_exist_ok=True)
    return cached, rid


def copy_of(template: tuple[Path, str], tmp_path: Path, mp: pytest.MonkeyPatch) -> Path:
    """A test's own copy of a ``built_once`` home, in use."""
    home = tmp_path / "home"
    shutil.copytree(template[0], home)
    use_home(mp, home)
    return home


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An isolated GPDATA_HOME with a test key and a postcode lookup."""
    use_home(monkeypatch, tmp_path)
    f.write_lookup(tmp_path / "reference" / "postcode_lsoa.csv",
                   [("LS1 4AB", "E01000001"), ("LS2 9XY", "E01000002")])
    return tmp_path


def practice_resources(ods: str = "A81001") -> list[dict]:
    """Two valid patients with a spread of records, one invalid NHS number, one opted out."""
    return [
        f.organization(ods), *f.practitioner("prac-1", "123456789012"),
        f.patient("p1", "999 000 0018", family="Quinlan", given="Morwenna", dob="1980-05-17"),
        f.patient("p2", "9990000026", family="Abernethy", given="Tobias", dob="1990-02-11", postcode="LS2 9XY",
                  line="7 Elm Close", gender="male"),
        f.patient("p3", "9990000027", family="Invalid", given="Number"),
        f.patient("p4", "9990000034", family="Optedout", given="Olive", dob="1970-07-07"),
        f.observation("o1", "p1", f.BMI, "2020-01-01", value=27.5, unit="kg/m2", note="Morwenna Quinlan weighed"),
        f.condition("c1", "p1", f.HYPERTENSION, "2019-05-05"),
        f.observation("o2", "p2", f.BMI, "2021-06-01", value=30.0, unit="kg/m2"),
        f.observation("o3", "p3", f.BMI, "2021-06-01", value=31.0, unit="kg/m2"),
        f.observation("o4", "p4", f.DISSENT, "2022-01-01"),
        f.observation("o5", "p4", f.BMI, "2021-06-01", value=22.0, unit="kg/m2"),
        f.medication_issue("m1", "p1", f.GLIMEPIRIDE, "2022-03-03"),
        f.medication_issue("m2", "p4", f.GLIMEPIRIDE, "2022-03-03"),
        f.appointment("a1", "p1", "2024-03-01T09:10:00+00:00"),
    ]
