"""The public data release register (CSV and HTML), like NHS Digital's: who received what, why and when."""

from __future__ import annotations

import html
from pathlib import Path

from gpdata import audit
from gpdata.share import csvsafe
from gpdata.share.projects import Project
from gpdata.store.release import release_order

# The register is published: its files are readable by anyone (0644, folder 0755), unlike every other output.
PUBLIC_FILE_MODE = 0o644
PUBLIC_DIR_MODE = 0o755
COLUMNS = ["organisation", "project_id", "purpose", "legal_basis", "datasets", "national_data_optout",
           "approvals", "precision", "disclosure_risk", "releases", "last_release_date"]


def _precision(p: Project) -> str:
    finer = p.finer_precision()
    return "coarsest (defaults)" if not finer else "finer than default: " + "; ".join(
        f"{c} {v}" for c, v in finer.items())


def _risk(p: Project, last: dict | None) -> str:
    """The approved minimum k and whether the latest extract met it. No count and no share of one: the register
    is publishable, and a share of a small extract times its rounded size would give a small count back. The
    figures are in the extract's risk report (access-controlled)."""
    env = "" if p.environment == "standard" else f"trusted research environment ({p.environment_reason}); "
    met = " met by the latest extract" if (last or {}).get("risk") else ""
    return f"{env}minimum k {p.minimum_k}{met}"


def rows(projects: list[Project], store_root: Path) -> list[dict]:
    extracts = [e for e in audit.entries(store_root) if e["event"] == "extract"]
    out = []
    for p in sorted(projects, key=lambda p: (p.organisation, p.project_id)):
        mine = [e for e in extracts if e["project"] == p.project_id]
        out.append({
            "organisation": p.organisation, "project_id": p.project_id, "purpose": p.purpose,
            "legal_basis": p.legal_basis, "datasets": "; ".join(f"{t} ({', '.join(c)})" for t, c in p.tables.items()),
            "national_data_optout": "applied" if p.national_data_optout == "apply"
            else f"exempt: {p.exemption_reason}",
            "approvals": "; ".join(f"{a.panel} {a.reference} ({a.date})" for a in p.approvals),
            "precision": _precision(p),
            "disclosure_risk": _risk(p, mine[-1] if mine else None),
            "releases": "; ".join(sorted({e["release"] for e in mine}, key=release_order)),
            "last_release_date": max((e["at"][:10] for e in mine), default=""),
        })
    return out


def write(projects: list[Project], store_root: Path, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(PUBLIC_DIR_MODE)
    data = rows(projects, store_root)
    csvsafe.write(folder / "register.csv", COLUMNS, data)  # spreadsheet formulas neutralised
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(str(r[c]))}</td>" for c in COLUMNS) + "</tr>\n"
                    for r in data)
    head = "".join(f"<th>{html.escape(c.replace('_', ' '))}</th>" for c in COLUMNS)
    (folder / "register.html").write_text(
        "<!doctype html><html lang=\"en\"><meta charset=\"utf-8\"><title>gpdata data release register</title>"
        "<h1>gpdata data release register</h1><p>Organisations that received data, why, under which legal "
        f"basis and when.</p><table><thead><tr>{head}</tr></thead><tbody>\n{cells}</tbody></table></html>\n")
    written = [folder / "register.csv", folder / "register.html"]
    for path in written:  # public by design: readable by anyone, unlike every other output (umask 027)
        path.chmod(PUBLIC_FILE_MODE)
    return written
