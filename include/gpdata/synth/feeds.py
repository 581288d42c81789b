"""Feed files for synthetic practices (the demo and tests): one feed per practice, in a chosen format."""

from __future__ import annotations

from pathlib import Path

from gpdata.ingest.feeds import Feed, feed_yaml


def write_synthetic_feeds(ods_codes: list[str], sources: Path, feeds_dir: Path,
                          formats: list[str] | None = None) -> list[Path]:
    """One feed file per synthetic practice, practice i delivering in ``formats[i % len(formats)]``: ``fhir``
    (the generated bundles) or a flat-file dialect (``emis_csv``, ``tpp_pipe``, ``research_tab`` or one in
    GPDATA_DIALECTS_DIR: the same records exported to ``<sources>/<ODS>-<dialect>/``, an incremental feed, or a
    baseline one for a dialect that delivers snapshots). Locations are relative when the folders are siblings."""
    formats = formats or ["fhir"]
    feeds_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i, ods in enumerate(ods_codes):
        fmt = formats[i % len(formats)]
        folder = ods if fmt == "fhir" else f"{ods}-{fmt}"
        if fmt != "fhir":
            from gpdata.synth.exports import export_flatfile

            export_flatfile(sources / ods, sources / folder, ods, fmt)
        location = sources / folder
        if feeds_dir.resolve().parent == sources.resolve().parent:
            location = Path("..") / sources.name / folder
        if fmt == "fhir":
            fields = {"format": "fhir"}
        else:
            from gpdata.ingest.dialects import load_dialect

            mode = "baseline" if load_dialect(fmt).delivers == "snapshot" else "incremental"
            fields = {"format": "flatfile", "dialect": fmt, "mode": mode}
        feed = Feed(ods_code=ods, name=f"Synthetic practice {ods}", supplier="synthetic", location=str(location),
                    **fields)
        path = feeds_dir / f"{ods}.yaml"
        path.write_text(feed_yaml(feed))
        written.append(path)
    return written
