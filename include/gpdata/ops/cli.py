"""The `gpdata` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gpdata import settings
from gpdata.errors import ConfigError, GpdataError


def _synth(args) -> int:
    from gpdata.synth import generate
    from gpdata.synth.feeds import write_synthetic_feeds

    root = Path(args.out).resolve()
    truths = generate(root, n_practices=args.practices, n_patients=args.patients, seed=args.seed,
                      events_per_patient=args.events_per_patient, dirty_fraction=args.dirty_fraction,
                      optout_fraction=args.optout_fraction, progress=lambda msg: print(msg, flush=True))
    if args.feeds_dir:
        write_synthetic_feeds([t.ods_code for t in truths], root / "sources", Path(args.feeds_dir).resolve(),
                              formats=args.formats.split(","))
        print(f"feed files: {args.feeds_dir}")
    print(f"wrote {len(truths)} practices under {root / 'sources'}; lookups under {root / 'reference'}")
    return 0


def _feeds(args) -> int:
    from gpdata.ingest.feeds import add_feed, survey_feeds

    folder = Path(args.dir) if args.dir else settings.load().feeds_dir
    if args.action == "add":
        fields = {k: getattr(args, k) for k in ("ods_code", "name", "supplier", "format", "location",
                                                "connection_id", "dialect", "mode", "schedule")
                  if getattr(args, k) is not None}
        if args.inactive:
            fields["active"] = False
        path, sample = add_feed(folder, fields, check_sample=Path(args.check_sample) if args.check_sample else None)
        if sample is not None:
            print("sample read: " + ", ".join(f"{t} {n}" for t, n in sample.items()))
        print(f"wrote {path}; the practice joins the extraction DAG at its next parse")
        return 0
    feeds, problems = survey_feeds(folder)  # a broken file disables that feed only: list the others
    if args.action == "validate":
        from gpdata.ingest.dialects import load_dialect

        for dialect in sorted({f.dialect for f in feeds if f.dialect}):
            try:
                load_dialect(dialect)  # the full dialect check (DAG parsing only checks its name and kind)
            except GpdataError as exc:
                problems += [ConfigError(f"dialect {dialect}: {exc}", file=str(f.source_file))
                             for f in feeds if f.dialect == dialect]
        for problem in problems:
            print(f"gpdata: error: {problem}", file=sys.stderr)
        if problems:
            bad = {p.file for p in problems}
            valid = [f for f in feeds if str(f.source_file) not in bad]
            print(f"{len(bad)} feed file(s) invalid, {len(valid)} valid in {folder}", file=sys.stderr)
            return 1
        if not feeds:
            print(f"gpdata: error: no feed files (*.yaml) in {folder}", file=sys.stderr)
            return 1
        print(f"{len(feeds)} feed(s) valid in {folder}")
        return 0
    if not feeds and not problems:
        print(f"no feed files (*.yaml) in {folder}", file=sys.stderr)
        return 0
    print(f"{'ODS':8} {'active':6} {'format':8} {'mode':11} {'schedule':10} {'supplier':10} name")
    for f in feeds:
        print(f"{f.ods_code:8} {str(f.active).lower():6} {f.format:8} {f.mode:11} {f.schedule:10} "
              f"{f.supplier:10} {f.name}")
    if problems:
        print(f"\n{len(problems)} feed file(s) cannot be read; their practices do not run until fixed:")
        for problem in problems:
            print(f"  {problem.file}: {problem.cause}")
        return 1
    return 0


def _dialects(args) -> int:
    from gpdata.ingest.dialects import dialect_files, load_dialect, resolve_dialect

    if args.action == "list":
        shipped = settings.DEFAULT_DIALECTS_DIR.resolve()
        print(f"{'name':16} {'kind':8} {'from':22} description")
        for name, path in dialect_files().items():
            where = "shipped" if path.parent.resolve() == shipped else "GPDATA_DIALECTS_DIR"
            kind = description = "?"
            try:
                d = load_dialect(str(path))
                kind, description = d.kind, d.description
            except GpdataError as exc:
                description = f"INVALID: {exc.cause}"
            print(f"{name:16} {kind:8} {where:22} {description}")
        return 0
    if args.action == "validate":
        names = [args.name] if args.name else list(dialect_files())
        bad = 0
        for name in names:
            try:
                d = load_dialect(name)
                if not name.endswith((".yaml", ".yml")) and d.name != name:
                    raise GpdataError(f"the file {name}.yaml names the dialect {d.name!r}: make them agree",
                                      file=str(d.source_file))
                if d.kind == "flatfile":
                    from gpdata.ingest.sources.flatfile import load_lookup

                    for lookup in d.lookups:
                        load_lookup(d, lookup)
                print(f"{name}: valid ({d.kind}, {len(d.tables)} tables)")
            except GpdataError as exc:
                bad += 1
                print(f"gpdata: error: {exc}", file=sys.stderr)
        return 2 if bad else 0
    if not args.name:
        raise GpdataError("gpdata dialects show needs a dialect name or file (see gpdata dialects list)")
    import yaml

    d = load_dialect(args.name)
    print(f"# {resolve_dialect(args.name)}")
    doc = d.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_defaults=True)
    doc["reads"] = {t: d.columns(t) for t in d.tables}
    print(yaml.safe_dump(doc, sort_keys=False, width=118))
    return 0


def _summary(args) -> int:
    from gpdata.ops.report import print_summary

    return print_summary(settings.load())


def _dev_key(args) -> int:
    from gpdata.privacy.keys import write_development_key

    path = Path(args.path) if args.path else settings.load().secrets / "dev-master.key"
    print(("wrote " if write_development_key(path) else "kept existing ") + f"development key {path}")
    return 0


def _scan(args) -> int:
    from gpdata.ops.leakscan import collect_identifiers, group, scan_tree
    from gpdata.privacy.deid import Pseudonymiser
    from gpdata.privacy.keys import load_master_key

    cfg = settings.load()
    ids = collect_identifiers(cfg.sources, cfg.quarantined_deliveries)  # the inbox and refused deliveries
    if not ids.counts:
        print(f"gpdata: error: no identifiers to look for: no FHIR delivery under {cfg.sources} or "
              f"{cfg.quarantined_deliveries}", file=sys.stderr)
        return 2
    try:  # with the key, a patient's own full date of birth in their row is checked too
        pseudo = Pseudonymiser(load_master_key())
        ids.link(lambda nhs: pseudo(nhs, "nhs_number"))
    except GpdataError as exc:
        print(f"note: per-patient date-of-birth check skipped ({exc.cause})")
    # By default everything gpdata wrote: GPDATA_HOME but for the identifiable inbox and refused deliveries,
    # secrets and reference lookups (every postcode in the country), and the store wherever it is.
    inside = not cfg.store_is_remote and Path(cfg.store).is_relative_to(cfg.home)
    default = [p for p in (cfg.home, *([] if inside else [cfg.store])) if p.exists()]
    stats: dict = {}
    findings = scan_tree(args.paths or default, ids, stats,
                         exclude=[] if args.paths else [cfg.sources, cfg.quarantined_deliveries, cfg.secrets,
                                                         cfg.reference])
    if not stats.get("files"):
        print("gpdata: error: no file to scan under " + ", ".join(map(str, args.paths or default)), file=sys.stderr)
        return 2
    for g in group(findings):
        print(f"{g['count']:>6} x {g['kind']:<14} in {g['folder']}  (e.g. {g['example']})")
    print(f"{len(findings)} finding(s) in {stats['files']} file(s), for {ids.describe()}")
    return 1 if findings else 0


def _keys(args) -> int:
    import os

    from gpdata.privacy.keys import KEY_FILE_ENV, add_key_version, load_master_key, write_key_file
    from gpdata.store.rotation import rotate

    if args.action in ("new", "add-version"):
        if not args.key_file:
            print(f"gpdata: error: keys {args.action} needs --key-file", file=sys.stderr)
            return 2
        if args.action == "new":
            write_key_file(Path(args.key_file))
            print(f"wrote a new master key file {args.key_file} (mode 0600; version v1)")
        else:
            print(f"added key version {add_key_version(Path(args.key_file))} to {args.key_file}; now re-key the "
                  "store with it (`gpdata keys rekey`, or `docker compose run --rm gpdata-keys`)")
        return 0
    if args.action == "show":
        key = load_master_key()
        print(f"key versions {', '.join(key.versions)} (current {key.version}); "
              f"{'development' if key.development else 'production'} key; check values "
              + ", ".join(f"{v} {c}" for v, c in key.checks().items()))
        return 0
    path = args.key_file or os.environ.get(KEY_FILE_ENV)
    if args.action == "rotate" and not path:
        print(f"gpdata: error: rotation needs a key file (--key-file or {KEY_FILE_ENV}); with keys in the "
              "environment, add the new version there (v1:<hex>,v2:<hex>) and run `gpdata keys rekey`",
              file=sys.stderr)
        return 2
    env = {**os.environ, KEY_FILE_ENV: path, "GPDATA_MASTER_KEY": ""} if path else None
    steps = rotate(settings.load(), lambda: load_master_key(env),
                   (lambda: add_key_version(Path(path))) if args.action == "rotate" else None)
    for step, what in steps.items():
        print(f"{step}: {what}")
    return 0


def _release(args) -> int:
    import json

    from gpdata.store import release

    root = settings.load().store
    if args.action == "create":
        m = release.create_release(root, note=args.note or "", allow_empty=args.allow_empty)
        print(f"release {m['release_id']}: " + ", ".join(f"{t} v{e['version']} ({e['rows']} rows)"
                                                          for t, e in m["tables"].items()))
    elif args.action == "list":
        rows = release.list_releases(root)
        if not rows:
            print(f"no releases under {release.releases_dir(root)}")
        for m in rows:
            total = sum(e["rows"] for e in m["tables"].values())
            print(f"{m['release_id']:14} {m['status']:10} {m['created_at']}  {total} rows in {len(m['tables'])} tables"
                  + (f"  ({m['note']})" if m.get("note") else ""))
    elif args.action == "show":
        if not args.id:
            raise GpdataError("gpdata release show needs a release id (see gpdata release list)")
        print(json.dumps(release.get_release(root, args.id), indent=2))
    elif args.action == "export":
        if not (args.id and args.out):
            raise GpdataError("gpdata release export needs a release id and --out DIR")
        for path in release.export_snapshot(root, args.id, Path(args.out)):
            print(path)
    return 0


def _projects(args) -> int:
    from gpdata.share.projects import load_projects

    cfg = settings.load()
    import datetime as dt

    folder = Path(args.dir) if args.dir else cfg.projects_dir
    projects = load_projects(folder)
    if args.action == "risk":
        return _project_risk(args, cfg, projects)
    if not projects:
        print(f"gpdata: error: no project files (*.yaml) in {folder}", file=sys.stderr)
        return 1
    today = dt.date.today()

    def state(p) -> str:
        return "inactive" if not p.active else "EXPIRED" if today > p.expires else "active"

    for p in projects:
        print(f"{p.project_id:16} {state(p):8} expires {p.expires}  NDOP "
              f"{p.national_data_optout:6} {p.organisation}: {', '.join(p.tables)}")
    expired = [p for p in projects if state(p) == "EXPIRED"]
    print(f"{len(projects)} project file(s) valid: {sum(state(p) == 'active' for p in projects)} active, "
          f"{len(expired)} expired, {sum(state(p) == 'inactive' for p in projects)} inactive")
    for p in expired:
        print(f"gpdata: warning: project {p.project_id}: approval expired on {p.expires}; dissemination refuses "
              f"it until the approval is renewed (or set active: false in {p.source_file})", file=sys.stderr)
    return 1 if expired else 0


def _project_risk(args, cfg, projects) -> int:
    """The risk report of a project's extract of a release, without writing the extract."""
    import json

    from gpdata.privacy.keys import load_master_key
    from gpdata.share.disseminate import extract
    from gpdata.store import release

    chosen = [p for p in projects if p.project_id == args.project]
    if not chosen:
        raise GpdataError(f"no project {args.project!r} (see gpdata projects)")
    release_id = args.release or release.latest_release(cfg.store)["release_id"]
    report = extract(chosen[0], release_id, cfg.store, cfg.extracts, load_master_key(), requested_by="risk",
                     areas=cfg.area_lookup, write=False)
    print(json.dumps(report, indent=2, default=str))
    return 0 if report["meets_minimum_k"] else 1


def _date(text: str):
    import argparse
    import datetime as dt

    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def _ndop(args) -> int:
    from gpdata.privacy import ndop
    from gpdata.privacy.keys import load_master_key

    meta = ndop.ingest(Path(args.file), settings.load().store, load_master_key(), args.published)
    print(f"National Data Opt-out list published {meta['published']} ingested: {meta['patients']} patients "
          f"pseudonymised ({meta['invalid_rows_dropped']} invalid rows dropped); the identifiable file was deleted")
    return 0


def _disseminate(args) -> int:
    import getpass

    from gpdata.privacy.keys import load_master_key
    from gpdata.share.disseminate import DisseminationRefused, disseminate_all
    from gpdata.share.projects import load_projects

    cfg = settings.load()
    if not any(p.active for p in load_projects(cfg.projects_dir)):
        print(f"gpdata: error: no active project in {cfg.projects_dir}: nothing to disseminate", file=sys.stderr)
        return 1
    refused: dict = {}
    try:
        done = disseminate_all(cfg, load_master_key(), requested_by=args.requested_by or getpass.getuser(),
                               release_id=args.release)
    except DisseminationRefused as exc:  # the others were extracted: show them, then each refusal
        done, refused = exc.done, exc.refused
    for project, m in done.items():
        print(f"{project}: release {m['release']} -> {cfg.extracts / project / m['release']} "
              + ", ".join(f"{t} {e['rows']}" for t, e in m["tables"].items()))
    if done:
        print(f"register: {cfg.register}/register.html")
    for project, exc in refused.items():
        print(f"gpdata: error: {project} refused: {exc}", file=sys.stderr)
    return 1 if refused else 0


def _notifications(args) -> int:
    import getpass

    from gpdata.share import recall

    cfg = settings.load()
    if args.action == "done":
        if not (args.project and args.release):
            raise GpdataError("gpdata notifications done needs a project and a release")
        n = recall.mark_notified(cfg.extracts, cfg.store, args.project, args.release, getpass.getuser())
        print(f"{n} notification(s) closed for {args.project} {args.release}")
        return 0 if n else 1
    pending = recall.pending_notifications(cfg.extracts)
    for item in pending:
        print(f"{item['project']} {item['release']} {item['action']} {item['at']}: notify "
              f"{', '.join(item['recipients']) or 'no recipient recorded'}")
    print(f"{len(pending)} notification(s) pending")
    return 0


def _audit(args) -> int:
    from gpdata import audit
    from gpdata.store import release

    cfg = settings.load()
    n = release.verify_audit(cfg.store)
    if not n:
        print(f"no audit log at {audit.audit_dir(cfg.store)}: nothing has been recorded in this store yet",
              file=sys.stderr)
        return 1
    print(f"audit log intact: {n} entries, keyed chain consistent with the head published in "
          f"{audit.published_head_path()} and every release manifest")
    return 0


def version() -> str:
    """The installed package's version, else (a checkout run from source) the one pyproject.toml declares."""
    from importlib import metadata

    try:
        return metadata.version("gpdata")
    except metadata.PackageNotFoundError:
        import tomllib

        from gpdata.ops.airflow_env import REPO_ROOT

        try:
            return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "unknown"


def _secrets(args) -> int:
    from gpdata.ops import compose_secrets
    from gpdata.ops.airflow_env import REPO_ROOT

    compose_file = Path(args.compose_file) if args.compose_file else REPO_ROOT / "docker-compose.yaml"
    env_file, steps = compose_secrets.init(compose_file, keys_dir=Path(args.keys_dir) if args.keys_dir else None,
                                           force=args.force)
    for step in steps:
        print(step)
    print(f"docker compose reads {env_file} (the admin password is its _AIRFLOW_WWW_USER_PASSWORD; no value is "
          "printed): docker compose up -d")
    return 0


def _airflow(args) -> int:
    """Run an `airflow` command (this venv's) against the project: AIRFLOW_HOME, the DAGs and plugins, the
    metadata database and the GPDATA_* folders of GPDATA_HOME, whatever the shell has set."""
    import os

    from gpdata.ops.airflow_env import airflow_env

    exe = Path(sys.executable).with_name("airflow")
    env = {**os.environ, **airflow_env(settings.load())}
    env["PATH"] = f"{exe.parent}{os.pathsep}{env.get('PATH', '')}"
    os.execve(str(exe), ["airflow", *args.args], env)  # noqa: S606  (does not return)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpdata", description=__doc__)
    p.add_argument("--version", action="version", version=f"gpdata {version()}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="generate synthetic GP practices (FHIR bundles, lookups)")
    s.add_argument("--out", default=str(settings.home_dir()), help="output root (default $GPDATA_HOME)")
    s.add_argument("--practices", type=int, default=3)
    s.add_argument("--patients", type=int, default=10_000, help="registered patients per practice")
    s.add_argument("--events-per-patient", type=float, default=100.0)
    s.add_argument("--dirty-fraction", type=float, default=0.01, help="share of records made dirty")
    s.add_argument("--optout-fraction", type=float, default=0.03, help="share of patients with a type 1 dissent")
    s.add_argument("--seed", type=int, default=42)
    s.add_argument("--feeds-dir", help="also write one feed YAML per practice here")
    s.add_argument("--formats", default="fhir",
                   help="with --feeds-dir: formats the practices deliver in, in turn (fhir or a flat-file dialect: "
                        "emis_csv, tpp_pipe, research_tab, or one in GPDATA_DIALECTS_DIR)")
    s.set_defaults(func=_synth)

    f = sub.add_parser("feeds", help="list, validate or add practice feeds")
    f.add_argument("action", choices=["list", "validate", "add"])
    f.add_argument("--dir", help="feed folder (default $GPDATA_FEEDS_DIR or include/config/feeds)")
    f.add_argument("--ods-code", dest="ods_code", help="add: ODS code of the practice (e.g. A81001)")
    f.add_argument("--name", help="add: practice name")
    f.add_argument("--supplier", help="add: clinical system supplier")
    f.add_argument("--format", choices=["fhir", "flatfile", "sql"], help="add: source format")
    f.add_argument("--location", help="add: delivery folder (fhir, flatfile)")
    f.add_argument("--connection-id", dest="connection_id", help="add: Airflow connection id (sql)")
    f.add_argument("--dialect", help="add: dialect name, or a dialect file under GPDATA_DIALECTS_DIR (flatfile, sql)")
    f.add_argument("--mode", choices=["baseline", "incremental"], help="add: extraction mode")
    f.add_argument("--schedule", help="add: @daily (default), @hourly, @weekly, @monthly or cron")
    f.add_argument("--inactive", action="store_true", help="add: write the feed switched off")
    f.add_argument("--check-sample", dest="check_sample", metavar="PATH",
                   help="add: read this sample delivery with the feed's format and dialect first; refuse the feed "
                        "if it cannot be read")
    f.set_defaults(func=_feeds)

    dl = sub.add_parser("dialects", help="list, validate or show source dialects (shipped and GPDATA_DIALECTS_DIR)")
    dl.add_argument("action", choices=["list", "validate", "show"])
    dl.add_argument("name", nargs="?", help="validate, show: a dialect name or a dialect file under "
                                            "GPDATA_DIALECTS_DIR (validate: default every dialect)")
    dl.set_defaults(func=_dialects)

    sub.add_parser("summary", help="per-practice counts from the latest run manifests").set_defaults(func=_summary)

    st = sub.add_parser("status", help="the GP data page's status index: rebuild it from the run manifests, or "
                                       "list the practices whose delivery is late (exit 1 if any)")
    st.add_argument("action", choices=["rebuild", "late"])
    st.set_defaults(func=lambda args: __import__("gpdata.ops.status", fromlist=["command"]).command(args))

    k = sub.add_parser("dev-key", help="write a development pseudonymisation key (synthetic data only)")
    k.add_argument("--path")
    k.set_defaults(func=_dev_key)

    ks = sub.add_parser("keys", help="show the key ring; rotate to a new key version and re-key the store")
    ks.add_argument("action", choices=["show", "rotate", "rekey", "new", "add-version"],
                    help="rotate: add a version to the key file and re-key everything (or finish an interrupted "
                         "rotation); rekey: the same for a ring extended by hand (v1:<hex>,v2:<hex>) or a key "
                         "file given a version with add-version; new: write a new production key file (0600)")
    ks.add_argument("--key-file", help=f"key file (default ${'{'}GPDATA_MASTER_KEY_FILE{'}'})")
    ks.set_defaults(func=_keys)

    r = sub.add_parser("release", help="create, list, show or export releases of the curated store")
    r.add_argument("action", choices=["create", "list", "show", "export"])
    r.add_argument("id", nargs="?", help="release id (show, export)")
    r.add_argument("--out", help="export: folder for plain Parquet files")
    r.add_argument("--note", help="create: a note kept in the release manifest")
    r.add_argument("--allow-empty", action="store_true",
                   help="create: make a release even if the store holds no rows (refused by default)")
    r.set_defaults(func=_release)

    pj = sub.add_parser("projects", help="list and validate approved projects; risk: a project's risk report")
    pj.add_argument("action", nargs="?", choices=["list", "risk"], default="list")
    pj.add_argument("project", nargs="?", help="risk: the project id")
    pj.add_argument("--release", help="risk: release id (default: the latest)")
    pj.add_argument("--dir", help="project folder (default $GPDATA_PROJECTS_DIR or include/config/projects)")
    pj.set_defaults(func=_projects)

    nd = sub.add_parser("ndop", help="ingest a National Data Opt-out list (pseudonymised; the file is deleted)")
    nd.add_argument("action", choices=["ingest"])
    nd.add_argument("file")
    nd.add_argument("--published", required=True, type=_date,
                    help="the list's publication date (YYYY-MM-DD): staleness is counted from it")
    nd.set_defaults(func=_ndop)

    ds = sub.add_parser("disseminate", help="extract a release for every active project, then the register")
    ds.add_argument("--release", help="release id (default: the latest)")
    ds.add_argument("--requested-by", help="who asked (for the audit log; default: the user)")
    ds.set_defaults(func=_disseminate)

    no = sub.add_parser("notifications", help="recipients to notify of extracts re-issued or withdrawn after an "
                                              "erasure; done: record that they were notified")
    no.add_argument("action", choices=["list", "done"], nargs="?", default="list")
    no.add_argument("project", nargs="?")
    no.add_argument("release", nargs="?")
    no.set_defaults(func=_notifications)

    au = sub.add_parser("audit", help="verify the keyed, hash-chained audit log against its published heads")
    au.add_argument("action", choices=["verify"])
    au.set_defaults(func=_audit)

    se = sub.add_parser("secrets", help="init: write .env for docker compose with a generated value for every "
                                        "secret, and the two key files it names (never printed, never replaced)")
    se.add_argument("action", choices=["init"])
    se.add_argument("--force", action="store_true", help="replace an existing .env (the key files are kept)")
    se.add_argument("--keys-dir", dest="keys_dir",
                    help="folder for the master and audit key files, outside the project folder "
                         "(default ~/.config/gpdata/compose-secrets)")
    se.add_argument("--compose-file", dest="compose_file",
                    help="the compose file (default the checkout's docker-compose.yaml); .env is written beside it")
    se.set_defaults(func=_secrets)

    c = sub.add_parser("scan", help="scan outputs for identifiers from the synthetic sources")
    c.add_argument("paths", nargs="*",
                   help="files, folders or s3:// store paths (default: everything under GPDATA_HOME but the inbox, "
                        "refused deliveries, secrets and reference lookups, and the store wherever it is)")
    c.set_defaults(func=_scan)

    af = sub.add_parser("airflow", help="run an airflow command against this project (e.g. gpdata airflow dags "
                                        "list): AIRFLOW_HOME and the project's Airflow settings set for it")
    af.add_argument("args", nargs=argparse.REMAINDER, help="the airflow command and its arguments")
    af.set_defaults(func=_airflow)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from gpdata.storage import restrict_umask

    restrict_umask()  # what any command writes is for its owner and group only
    try:
        code = args.func(args)
        sys.stdout.flush()  # inside the try: a reader that went away (| head) is a closed pipe, handled below
        return code
    except GpdataError as exc:
        print(f"gpdata: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return _closed_pipe()


def _closed_pipe() -> int:
    """The reader of our output went away (``gpdata release show ID | head``): stop quietly, with the status a
    process killed by SIGPIPE has, and point stdout at /dev/null so the interpreter's last flush cannot fail."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 141


if __name__ == "__main__":
    sys.exit(main())
