"""Human-readable summaries of run manifests (the demo and `gpdata summary`)."""

from __future__ import annotations

from gpdata import store
from gpdata.model import TABLES
from gpdata.settings import Settings


def practice_lines(ods: str, m: dict) -> list[str]:
    quarantined = {t: r for t, r in m.get("quality", {}).get("quarantined", {}).items() if r}
    total_q = sum(sum(r.values()) for r in quarantined.values())
    by_reason: dict[str, int] = {}
    for reasons in quarantined.values():
        for reason, n in reasons.items():
            by_reason[reason] = by_reason.get(reason, 0) + n
    rows = m.get("committed_rows") or {}
    if m.get("patients_read") is None:  # failed before anything was read: no counts to show
        error = m.get("error") or {}
        return [f"{ods}  {m.get('status')}  (run {m.get('run_id')})",
                f"    nothing read: failed at {error.get('stage') or 'extraction'}: {error.get('cause') or 'no cause'}"]
    lines = [
        f"{ods}  {m.get('status')}  (run {m.get('run_id')})",
        f"    patients read {m.get('patients_read')}, type 1 opt-outs excluded "
        f"{m.get('type1_optout', {}).get('patients_excluded')} "
        f"(re-admitted after withdrawal {m.get('type1_optout', {}).get('patients_readmitted')})",
        "    rows committed: " + (", ".join(f"{t} {rows[t]}" for t in TABLES if t in rows) or "none"),
        f"    rows quarantined: {total_q}"
        + (" (" + ", ".join(f"{k} {v}" for k, v in sorted(by_reason.items())) + ")" if by_reason else ""),
    ]
    if m.get("quality", {}).get("data_docs"):
        lines.append(f"    quality report (Great Expectations Data Docs): {m['quality']['data_docs']}")
    failures = m.get("quality", {}).get("failures") or []
    lines += [f"    FAILED: {f}" for f in failures]
    error = m.get("error") or {}
    if error:  # a failure after counts were recorded (e.g. at commit): its stage and cause, never "None"
        lines.append(f"    FAILED at {error.get('stage') or 'an unknown stage'}: "
                     f"{error.get('cause') or 'no cause recorded'}")
    return lines


def print_summary(cfg: Settings) -> int:
    manifests = store.latest_manifests(cfg.manifests)
    if not manifests:
        import sys

        print(f"gpdata: error: no run manifests under {cfg.manifests}: no practice has been run with this "
              "GPDATA_HOME / GPDATA_STORE (run the extraction DAG, or make demo)", file=sys.stderr)
        return 1
    for ods, m in manifests.items():
        if m.get("status") == "unchanged":
            print(f"{ods}  unchanged  (run {m.get('run_id')}: nothing new delivered; the store holds run "
                  f"{m.get('last_committed_run')}, below)")
            m = store.last_committed(cfg.manifests, ods) or m
        print("\n".join(practice_lines(ods, m)))
    return 0 if all(m.get("status") in ("committed", "unchanged") for m in manifests.values()) else 1
