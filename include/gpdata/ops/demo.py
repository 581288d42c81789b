"""`make demo`: synthetic practices through the real Airflow DAG, then a summary.

    python -m gpdata.ops.demo                       generate (once), run the DAG with `airflow dags test`
    python -m gpdata.ops.demo --airflow-standalone  start Airflow standalone on the same folders

Everything lives under GPDATA_HOME (default ./var) except the demo's development key, which it writes under
.secrets/ in the checkout (GPDATA_SECRETS_DIR to move it), outside GPDATA_HOME: copying var/ never copies it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from gpdata import settings
from gpdata.ops.airflow_env import airflow_env
from gpdata.ops.report import print_summary
from gpdata.privacy.keys import write_development_key

DEMO = {"practices": 3, "patients": 10_000, "seed": 42, "events_per_patient": 100.0, "dirty_fraction": 0.01}


def _say(msg: str) -> None:
    print(f"[gpdata demo] {msg}", flush=True)


def _airflow(args: list[str], env: dict, log: Path) -> None:
    """Run an airflow command, its output appended to a log file; show the tail if it fails."""
    with open(log, "a") as fh:
        fh.write(f"\n$ airflow {' '.join(args)}\n")
        fh.flush()
        proc = subprocess.run([str(Path(sys.executable).with_name("airflow")), *args], env=env,
                              stdout=fh, stderr=subprocess.STDOUT, check=False)
    if proc.returncode:
        tail = log.read_text().splitlines()[-40:]
        raise SystemExit(f"airflow {args[0]} failed (exit {proc.returncode}); last lines of {log}:\n"
                         + "\n".join(tail))


def prepare(cfg: settings.Settings, params: dict) -> Path:
    key_file = cfg.secrets / "dev-master.key"
    if cfg.secrets.is_relative_to(cfg.home):
        raise SystemExit(f"the key folder {cfg.secrets} lies inside GPDATA_HOME ({cfg.home}): set "
                         "GPDATA_SECRETS_DIR to a folder outside it")
    if write_development_key(key_file):
        _say(f"made a development pseudonymisation key at {key_file} (synthetic data only; "
             "refused when GPDATA_MODE=production)")
    else:
        _say(f"using the development key at {key_file}")
    stamp = cfg.sources / ".synth.json"
    if stamp.exists() and json.loads(stamp.read_text()) == params and cfg.feeds_dir.is_dir():
        _say(f"synthetic practices already generated under {cfg.sources}")
    else:
        from gpdata.ops.cli import main as cli

        _say(f"generating {params['practices']} synthetic practices of {params['patients']} patients")
        started = time.monotonic()
        rc = cli(["synth", "--out", str(cfg.home), "--feeds-dir", str(cfg.feeds_dir),
                  "--practices", str(params["practices"]), "--patients", str(params["patients"]),
                  "--seed", str(params["seed"]), "--events-per-patient", str(params["events_per_patient"]),
                  "--dirty-fraction", str(params["dirty_fraction"])])
        if rc:
            raise SystemExit(rc)
        stamp.write_text(json.dumps(params))
        _say(f"generated in {time.monotonic() - started:.0f} s")
    return key_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--airflow-standalone", action="store_true", help="start Airflow on the demo folders")
    parser.add_argument("--patients", type=int, default=DEMO["patients"])
    parser.add_argument("--practices", type=int, default=DEMO["practices"])
    args = parser.parse_args(argv)

    os.environ.setdefault("GPDATA_FEEDS_DIR", str(Path(os.environ.get("GPDATA_HOME", "var")).resolve() / "feeds"))
    cfg = settings.load()
    params = {**DEMO, "patients": args.patients, "practices": args.practices}
    key_file = prepare(cfg, params)
    env = {**os.environ, **airflow_env(cfg, key_file)}
    # Airflow starts its own components (standalone) as `airflow` subprocesses: this venv's first on PATH.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    log = cfg.airflow_home / "demo.log"

    if args.airflow_standalone:
        _say("starting Airflow standalone on the demo folders: open http://localhost:8080 "
             f"(the admin password is printed below and kept in {cfg.airflow_home})")
        os.execve(str(Path(sys.executable).with_name("airflow")), ["airflow", "standalone"], env)  # noqa: S606

    _say(f"preparing the Airflow metadata database (SQLite under {cfg.airflow_home}); log: {log}")
    _airflow(["db", "migrate"], env, log)
    _say("running DAG gpdata_extract through Airflow (airflow dags test)")
    started = time.monotonic()
    _airflow(["dags", "test", "gpdata_extract"], env, log)
    _say(f"DAG run finished in {time.monotonic() - started:.0f} s")
    _say("running DAG gpdata_release through Airflow")
    _airflow(["dags", "test", "gpdata_release"], env, log)
    from gpdata.store.release import latest_release, verify_audit

    latest = latest_release(cfg.store)
    _say(f"release {latest['release_id']} published (gpdata release list; gpdata release show "
         f"{latest['release_id']})")
    ndop_file = cfg.reference / "ndop.csv"
    if ndop_file.exists():
        from gpdata.privacy import ndop
        from gpdata.privacy.keys import load_master_key

        # The synthetic list is made with the practices, so it is published today.
        meta = ndop.ingest(ndop_file, cfg.store, load_master_key({"GPDATA_MASTER_KEY_FILE": str(key_file)}),
                           published=dt.date.today())
        _say(f"National Data Opt-out list ingested: {meta['patients']} patients, pseudonymised; "
             "the identifiable file was deleted")
    _say("running DAG gpdata_disseminate through Airflow (one task per approved project)")
    _airflow(["dags", "test", "gpdata_disseminate"], env, log)
    from gpdata import audit

    print()
    rc = print_summary(cfg)
    for manifest in sorted(cfg.extracts.glob(f"*/{latest['release_id']}/manifest.json")):
        m = json.loads(manifest.read_text())
        print(f"project {m['project']} ({m['organisation']}; National Data Opt-out {m['national_data_optout']}): "
              + ", ".join(f"{t} {e['rows']}" for t, e in m["tables"].items()) + f"\n    {manifest.parent}")
    print(f"audit log: {verify_audit(cfg.store)} entries, chain intact ({audit.audit_dir(cfg.store)}; "
          "gpdata audit verify)")
    print(f"""
Outputs
  development key        {key_file}   (outside GPDATA_HOME; refused when GPDATA_MODE=production)
  curated Delta tables   {cfg.store}/<table>   (how to read them: docs/analysts.md)
  quarantined rows       {cfg.store}/_quarantine   (reason and position, no identifiers)
  run manifests          {cfg.manifests}/<ODS>/
  quality                {cfg.data_docs}/<ODS>/index.html (Data Docs); {cfg.quality}/<ODS>/<run>.json
  releases               {cfg.store}/_releases/<id>/ (release.json, data_dictionary.md and .json)
  project extracts       {cfg.extracts}/<project>/<release>/ (Parquet per table, manifest.json, summary.json)
  public register        {cfg.register}/register.html and register.csv
  synthetic sources      {cfg.sources}/<ODS>/   (identifiable test data; never copied to the store)
  Airflow log of the run {log}
See it in the Airflow UI: make airflow   (Airflow standalone on the same folders, http://localhost:8080)""")
    return rc


if __name__ == "__main__":
    sys.exit(main())
