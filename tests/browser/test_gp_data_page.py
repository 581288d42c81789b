"""The GP data page in a real browser, on a real Airflow api-server.

Two small synthetic practices and one whose delivery folder is missing run through `airflow dags test
gpdata_extract`; a release and the example projects' extracts follow (library calls). Then the api-server
starts with the FAB auth manager and the plugin, an operator (role Op) logs in through the login form in headless
Chromium, and the page's numbers are checked against the run, release and extract manifests. The failing
practice's cause must be on the page and in the failure callback's log line. Every plugin route must refuse
requests without a login (401/403) and a user without the Plugins permission (403). Chromium runs offline (every
host name but 127.0.0.1 fails to resolve) with its performance log on: no plugin page may request another
host, and the Data Docs pages must render their content, sandboxed, from the plugin alone.

At national scale (issue 24) the page shows the summary and the failures first (a broken feed file, written
after the run, is listed there with its cause), finds a practice by search (server-side, through the form), and
each practice's trend charts (issue 20 item 8) plot the values of its run manifests (SVG points carry them in
data-value).

Needs the Debian packages chromium and chromium-driver (`make browser-deps`, run by `make test`); without them
the test fails. A screenshot is saved under test-artifacts/.
"""

import datetime as dt
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from gpdata import pipeline, settings, store
from gpdata.ingest.feeds import find_feed
from gpdata.model import TABLES
from gpdata.ops.airflow_env import REPO_ROOT, airflow_env
from gpdata.ops.leakscan import collect_identifiers, scan_text
from gpdata.privacy import keys, ndop
from gpdata.share.disseminate import disseminate_all
from gpdata.store import release
from gpdata.synth import generate
from gpdata.synth.feeds import write_synthetic_feeds
from tests.support.airflow import AIRFLOW, run_airflow

pytestmark = pytest.mark.system
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
ARTIFACTS = REPO_ROOT / "test-artifacts"
FAILING = "Y99999"  # a practice whose delivery folder does not exist
BROKEN_FEED = "broken-feed.yaml"  # written after the run: the page lists it with its cause
FAB = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _plugin_paths() -> list[str]:
    """Every route of the plugin app, with sample path parameters, under its URL prefix."""
    sys.path.insert(0, str(REPO_ROOT / "plugins"))
    try:
        from fastapi.routing import APIRoute
        from gpdata_ui.ui_app import URL_PREFIX, create_app
    finally:
        sys.path.remove(str(REPO_ROOT / "plugins"))
    paths = [re.sub(r"\{practice\}", "A81001", r.path) for r in create_app(dependencies=[]).routes
             if isinstance(r, APIRoute)]
    paths = [p.replace("{name}", "opensafely-weight-snomed") for p in paths]  # a shipped reference code list
    return [URL_PREFIX + re.sub(r"\{path:path\}", "index.html", p) for p in paths]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("gpdata_ui")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "GPDATA"))}
    env["GPDATA_SECRETS_DIR"] = os.environ["GPDATA_SECRETS_DIR"]  # the test session's, never the checkout's
    env.update({"GPDATA_HOME": str(home), "GPDATA_FEEDS_DIR": str(home / "feeds")})
    cfg = settings.load(env)
    truths = generate(home, n_practices=2, n_patients=60, events_per_patient=20, dirty_fraction=0.02,
                      optout_fraction=0.1, seed=21)
    practices = sorted(t.ods_code for t in truths)
    assert FAILING not in practices
    write_synthetic_feeds(practices, cfg.sources, cfg.feeds_dir)
    (cfg.feeds_dir / f"{FAILING}.yaml").write_text(
        f"ods_code: {FAILING}\nname: Practice without a delivery\nlocation: ../sources/{FAILING}\n")
    key_file = cfg.secrets / "dev.key"
    keys.write_development_key(key_file)
    env.update(airflow_env(cfg, key_file))
    env.update({"AIRFLOW__CORE__AUTH_MANAGER": FAB, "AIRFLOW__API__EXPOSE_CONFIG": "False"})
    env.pop("GPDATA_DEADLINE_MINUTES", None)
    process = pytest.MonkeyPatch()  # the release, list ingest and dissemination run in-line, in the same home
    for name, value in env.items():
        if name.startswith("GPDATA_"):
            process.setenv(name, value)

    run_airflow(env, "db", "migrate")
    run_output = run_airflow(env, "dags", "test", "gpdata_extract", check=False)
    # A second run of the first practice's delivery (forced), so its trend charts have two points.
    pipeline.run_practice(find_feed(cfg.feeds_dir, practices[0]), cfg, "manual__browser_rerun", force=True)
    key = keys.load_master_key({keys.KEY_FILE_ENV: str(key_file)})
    release.create_release(cfg.store)
    ndop.ingest(cfg.reference / "ndop.csv", cfg.store, key, published=dt.date.today())
    disseminate_all(cfg, key, requested_by="browser test")
    (cfg.feeds_dir / BROKEN_FEED).write_text("ods_code: Y99998\nname: Broken\nlocation: x\nschedule: whenever\n")

    users = {}
    for role in ("Op", "Viewer"):
        name, password = f"{role.lower()}_user", secrets.token_urlsafe(16)
        run_airflow(env, "users", "create", "--username", name, f"--password={password}", "--role", role,
                    "--firstname", role, "--lastname", "User", "--email", f"{name}@example.org")
        users[role] = (name, password)

    port = _free_port()
    log = (home / "api-server.log").open("w")
    server = subprocess.Popen([AIRFLOW, "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, (home / "api-server.log").read_text()[-5000:]
            try:
                if httpx.get(f"{base}/api/v2/version", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "api-server did not answer in 180 s"
            time.sleep(1)
        yield {"cfg": cfg, "base": base, "users": users, "run_output": run_output, "practices": practices}
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the process group this fixture started, nothing else
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
        log.close()
        process.undo()


@pytest.fixture(scope="module")
def browser():
    assert CHROMIUM.exists() and CHROMEDRIVER.exists(), \
        "headless Chromium is needed: run `make browser-deps` (Debian packages chromium, chromium-driver)"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--window-size=1600,1200",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):  # offline, as on most NHS networks
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # every request the pages make
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(condition, timeout=60, what="the page"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        result = condition()
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _int(text: str) -> int:
    return int(text.strip().replace(",", ""))


def _find(driver, css):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, css)


def _trend_from_manifests(cfg, ods) -> dict[str, list[tuple[str, float]]]:
    """Each trend metric's (run, value) over the practice's run manifests that counted, oldest first."""
    runs = sorted((json.loads(p.read_text()) for p in (cfg.manifests / ods).glob("*.json")
                   if p.name not in ("latest.json", "committed.json")), key=lambda m: m["finished_at"])
    out: dict[str, list] = {"rows_committed": [], "quarantine_rate": [], "type1_excluded": [], "duration_seconds": []}
    for m in (m for m in runs if "committed_rows" in m):
        quality = m["quality"]
        quarantined = sum(sum(r.values()) for r in quality["quarantined"].values())
        out["rows_committed"].append((m["run_id"], sum(m["committed_rows"].values())))
        out["quarantine_rate"].append((m["run_id"], round(quarantined / sum(quality["rows_in"].values()), 6)))
        out["type1_excluded"].append((m["run_id"], m["type1_optout"]["patients_excluded"]))
        out["duration_seconds"].append((m["run_id"], round(sum(m["seconds"][s] for s in ("extract", "quality",
                                                                                          "commit")), 3)))
    return out


def _login(driver, base, username, password):
    from selenium.webdriver.common.by import By

    driver.get(f"{base}/")
    _wait(lambda: _find(driver, "input[name=username]"), what="the login form")
    driver.find_element(By.NAME, "username").send_keys(username)
    driver.find_element(By.NAME, "password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "input[type=submit], button[type=submit]").click()
    _wait(lambda: "/auth/login" not in driver.current_url and driver.get_cookie("_token"), what="the login")


def test_the_page_shows_the_manifests_counts_in_a_logged_in_browser(stack, browser):
    from selenium.webdriver.common.by import By

    cfg, base = stack["cfg"], stack["base"]
    _login(browser, base, *stack["users"]["Op"])
    # The navigation entry opens the page embedded in the Airflow UI.
    browser.get(f"{base}/")
    link = _wait(lambda: [a for a in _find(browser, "a, button") if a.text.strip() == "GP data"],
                 what="the GP data navigation entry")
    link[0].click()
    frame = _wait(lambda: _find(browser, "iframe"), what="the embedded page")[0]
    assert frame.get_attribute("src").rstrip("/").endswith("/gpdata")
    browser.switch_to.frame(frame)
    _wait(lambda: _find(browser, "#practice-table"), what="the practice table")
    ARTIFACTS.mkdir(exist_ok=True)
    browser.switch_to.default_content()
    browser.save_screenshot(str(ARTIFACTS / "gp-data-in-airflow.png"))
    browser.switch_to.frame(frame)
    html = browser.page_source

    manifests = store.latest_manifests(cfg.manifests)
    assert sorted(manifests) == sorted([*stack["practices"], FAILING])
    shown = {tr.get_attribute("data-practice") for tr in _find(browser, "tr.practice")}
    assert shown == set(manifests)
    for ods in stack["practices"]:
        m = manifests[ods]
        assert m["status"] == "committed"
        row = browser.find_element(By.CSS_SELECTOR, f'tr.practice[data-practice="{ods}"]')
        cell = lambda field, row=row: row.find_element(By.CSS_SELECTOR, f'[data-field="{field}"]').text  # noqa: E731
        assert cell("status").split()[0] == "committed" and m["run_id"] in cell("status")
        assert _int(cell("patients_read")) == m["patients_read"]
        assert _int(cell("type1_excluded")) == m["type1_optout"]["patients_excluded"] > 0
        reasons = {}
        for by_reason in m["quality"]["quarantined"].values():
            for reason, n in by_reason.items():
                reasons[reason] = reasons.get(reason, 0) + n
        assert reasons, "the synthetic data is dirty on purpose"
        assert _int(cell("quarantined_total")) == sum(reasons.values())
        page_reasons = {li.get_attribute("data-reason"): _int(li.find_element(By.CSS_SELECTOR, ".n").text)
                        for li in row.find_elements(By.CSS_SELECTOR, "li[data-reason]")}
        assert page_reasons == reasons
        assert cell("quality").startswith("passed") and m["quality"]["passed"]
        assert row.find_element(By.CSS_SELECTOR, "a.data-docs").get_attribute("href").endswith(
            f"/gpdata/data-docs/{ods}/index.html")
        rows = browser.find_element(By.CSS_SELECTOR, f'tr.practice-rows[data-practice="{ods}"]')
        page_rows = {t: _int(rows.find_element(By.CSS_SELECTOR, f'td[data-table="{t}"]').text) for t in TABLES}
        assert page_rows == m["committed_rows"]

    # The failing practice: its cause on the page, and in the failure callback's one log line.
    failed = manifests[FAILING]
    assert failed["status"] == "failed" and failed["error"]["stage"] == "extract"
    row = browser.find_element(By.CSS_SELECTOR, f'tr.practice[data-practice="{FAILING}"]')
    assert row.find_element(By.CSS_SELECTOR, '[data-field="status"]').text.split()[0] == "failed"
    cause = row.find_element(By.CSS_SELECTOR, '[data-field="cause"]').text
    assert cause == f"extract: {failed['error']['cause']}" and "does not exist" in cause
    line = f"gpdata failure: practice={FAILING} stage=extract cause={failed['error']['cause']}"
    assert line in stack["run_output"], stack["run_output"][-3000:]

    # Summary first, then what needs attention (the failure, the broken feed file), then the table.
    top = lambda css: browser.find_element(By.CSS_SELECTOR, css).location["y"]  # noqa: E731
    assert top("#summary") < top("#failures") < top("#practice-table")
    states = {a.get_attribute("data-state"): _int(a.find_element(By.CSS_SELECTOR, ".n").text)
              for a in _find(browser, "#summary a.count")}
    assert states["committed"] == len(stack["practices"]) and states["failed"] == 1
    [attention] = _find(browser, f'div.attention[data-practice="{FAILING}"]')
    assert top("#failures") < attention.location["y"] < top("#practice-table")
    assert attention.find_element(By.CSS_SELECTOR, '[data-field="cause"]').text == \
        f"extract: {failed['error']['cause']}"
    [broken] = _find(browser, f'li.broken-feed[data-file="{BROKEN_FEED}"]')
    assert "schedule" in broken.find_element(By.CSS_SELECTOR, '[data-field="cause"]').text
    assert top("#failures") < broken.location["y"] < top("#practice-table")

    # Releases: every table's pinned version and rows.
    [rel] = release.list_releases(cfg.store)
    tr = browser.find_element(By.CSS_SELECTOR, f'tr.release[data-release="{rel["release_id"]}"]')
    for t in TABLES:
        td = tr.find_element(By.CSS_SELECTOR, f'td[data-table="{t}"]')
        assert _int(td.find_element(By.CSS_SELECTOR, ".rows").text) == rel["tables"][t]["rows"]
        assert _int(td.find_element(By.CSS_SELECTOR, ".version").text) == rel["tables"][t]["version"]

    # Projects: the last extract of each.
    extracts = {p.parent.parent.name: json.loads(p.read_text()) for p in cfg.extracts.glob("*/*/manifest.json")}
    assert len(extracts) == 2
    for project, m in extracts.items():
        tr = browser.find_element(By.CSS_SELECTOR, f'tr.project[data-project="{project}"]')
        assert tr.find_element(By.CSS_SELECTOR, '[data-field="release"]').text == rel["release_id"]
        page_rows = {li.get_attribute("data-table"): _int(li.find_element(By.CSS_SELECTOR, ".n").text)
                     for li in tr.find_elements(By.CSS_SELECTOR, "li[data-table]")}
        assert page_rows == {t: e["rows"] for t, e in m["tables"].items()}

    # The page, seen whole, holds no identifier from the sources.
    browser.switch_to.default_content()
    browser.get(f"{base}/gpdata/")
    _wait(lambda: _find(browser, "#practice-table"))
    height = browser.execute_script("return document.body.scrollHeight")
    browser.set_window_size(1600, max(1200, height + 100))
    browser.save_screenshot(str(ARTIFACTS / "gp-data-page.png"))
    (ARTIFACTS / "gp-data-page.html").write_text(html)
    ids = collect_identifiers(cfg.sources)
    assert ids.counts["nhs_number"] > 100
    assert scan_text(html, ids, "page") == [] and scan_text(browser.page_source, ids, "page") == []

    # Search (on the server, through the form): one practice by ODS code, one by a part of its name.
    target = stack["practices"][1]
    box = browser.find_element(By.ID, "search")
    box.clear()
    box.send_keys(target.lower())
    browser.find_element(By.ID, "apply").click()
    _wait(lambda: "q=" in browser.current_url, what="the search")
    assert [tr.get_attribute("data-practice") for tr in _find(browser, "tr.practice")] == [target]
    assert browser.find_element(By.ID, "matching").text.startswith("1 matching")
    browser.save_screenshot(str(ARTIFACTS / "gp-data-search.png"))
    browser.get(f"{base}/gpdata/?q=without+a+delivery")
    _wait(lambda: _find(browser, "#practice-table"))
    assert [tr.get_attribute("data-practice") for tr in _find(browser, "tr.practice")] == [FAILING]

    # Trend charts: each plotted point is the value of one of the practice's run manifests, in run order.
    for ods in stack["practices"]:
        browser.get(f"{base}/gpdata/practice/{ods}")
        _wait(lambda: _find(browser, "svg.trend-chart"), what="the trend charts")
        plotted = {svg.get_attribute("data-metric"): [
            (c.get_attribute("data-run"), float(c.get_attribute("data-value")))
            for c in svg.find_elements(By.CSS_SELECTOR, "circle.point")] for svg in _find(browser, "svg.trend-chart")}
        expected = _trend_from_manifests(cfg, ods)
        assert len(expected["rows_committed"]) == (2 if ods == stack["practices"][0] else 1)
        assert plotted == {k: [(run, pytest.approx(v)) for run, v in points] for k, points in expected.items()}
        height = browser.execute_script("return document.body.scrollHeight")
        browser.set_window_size(1600, max(1200, height + 100))
        browser.save_screenshot(str(ARTIFACTS / f"gp-data-trends-{ods}.png"))
        assert scan_text(browser.page_source, ids, "page") == []

    # The Data Docs link opens the practice's Data Docs for the logged-in user.
    browser.get(f"{base}/gpdata/data-docs/{stack['practices'][0]}/index.html")
    assert "Data Docs" in browser.page_source or "Validation" in browser.page_source


def test_every_plugin_route_refuses_requests_without_a_permitted_login(stack):
    base, users = stack["base"], stack["users"]
    paths = _plugin_paths()
    assert len(paths) >= 3
    ods = stack["practices"][0]
    made = release.latest_release(stack["cfg"].store)["release_id"]
    paths = [p.replace("A81001", ods).replace("{release_id}", made) for p in paths]

    def token(role):
        name, password = users[role]
        r = httpx.post(f"{base}/auth/token", json={"username": name, "password": password}, timeout=30)
        assert r.status_code in (200, 201), r.text
        return r.json()["access_token"]

    op, viewer = token("Op"), token("Viewer")
    for path in paths:
        assert httpx.get(base + path, timeout=30).status_code in (401, 403), path
        assert httpx.get(base + path, cookies={"_token": "forged"}, timeout=30).status_code in (401, 403), path
        assert httpx.get(base + path, headers={"Authorization": "Bearer forged"}, timeout=30).status_code \
            in (401, 403), path
        assert httpx.get(base + path, headers={"Authorization": f"Bearer {viewer}"}, timeout=30).status_code \
            == 403, path
        assert httpx.get(base + path, headers={"Authorization": f"Bearer {op}"}, timeout=30).status_code \
            == 200, path


def _requests(driver) -> list[dict]:
    """Requests (URL, and response headers when there was a response) from the performance log since the last
    call."""
    sent, headers = {}, {}
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        if message["method"] == "Network.requestWillBeSent":
            sent[params["requestId"]] = params["request"]["url"]
        elif message["method"] == "Network.responseReceived":
            headers[params["requestId"]] = {k.lower(): v for k, v in params["response"]["headers"].items()}
    return [{"url": url, "headers": headers.get(rid)} for rid, url in sent.items()]


def _foreign(requests: list[dict]) -> list[str]:
    from urllib.parse import urlsplit

    return [r["url"] for r in requests
            if not r["url"].startswith(("data:", "about:", "blob:")) and urlsplit(r["url"]).hostname != "127.0.0.1"]


def test_no_plugin_page_requests_another_host_and_data_docs_render_offline(stack, browser):
    from selenium.webdriver.common.by import By

    base, ods = stack["base"], stack["practices"][0]
    if not browser.get_cookie("_token"):
        _login(browser, base, *stack["users"]["Op"])
    _requests(browser)  # forget what came before

    browser.get(f"{base}/gpdata/")
    _wait(lambda: _find(browser, "#practice-table"), what="the GP data page")
    seen = _requests(browser)
    assert seen and _foreign(seen) == [], _foreign(seen)

    browser.get(f"{base}/gpdata/data-docs/{ods}/index.html")
    seen = _requests(browser)  # what the page asked for while it loaded
    assert _foreign(seen) == [], _foreign(seen)
    _wait(lambda: _find(browser, "a.ge-offline-row-link"), what="the Data Docs index, drawn without scripts")
    seen += _requests(browser)
    assert _foreign(seen) == [], _foreign(seen)
    [doc] = [r for r in seen if r["url"].endswith(f"/data-docs/{ods}/index.html")]
    assert doc["headers"]["content-security-policy"].startswith("sandbox;")
    assert "default-src 'self'" in doc["headers"]["content-security-policy"]
    links = [a.get_attribute("href") for a in _find(browser, "a.ge-offline-row-link")]
    validations = [u for u in links if "/validations/" in u]
    suites = [u for u in links if "/expectations/" in u]
    assert len(validations) >= len(TABLES) and len(suites) >= len(TABLES), links
    shown = browser.find_element(By.TAG_NAME, "body").text  # the validation results tab (suites: a hidden tab)
    assert all(f"gpdata_{t}" in shown for t in TABLES), shown
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "data-docs-index.png"))

    patients = next(u for u in validations if "/gpdata_patients/" in u)
    for url, expected in ((patients, ("Expectation Validation Result", "Evaluated Expectations", "birth_month")),
                          (next(u for u in suites if u.endswith("/gpdata_patients.html")),
                           ("Expectation Suite", "birth_month"))):
        browser.get(url)
        _wait(lambda: all(e in browser.find_element(By.TAG_NAME, "body").text for e in expected),
              what=f"the content of {url}")
        seen = _requests(browser)
        assert _foreign(seen) == [], _foreign(seen)
        assert all(r["headers"]["content-security-policy"].startswith("sandbox;")
                   for r in seen if "/data-docs/" in r["url"] and r["headers"])
        # styled by the vendored Bootstrap (its reboot sets the body's margin to 0; a bare page has 8px)
        assert browser.find_element(By.TAG_NAME, "body").value_of_css_property("margin-top") == "0px"
    browser.save_screenshot(str(ARTIFACTS / "data-docs-validation.png"))
