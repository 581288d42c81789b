"""Configuration files (feeds, dialects, projects): YAML validated into pydantic models, with errors that name
the file and the field. Parsed documents of a folder are cached by size and modification time."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from gpdata.errors import ConfigError

M = TypeVar("M", bound=BaseModel)
# LibYAML's safe loader: about 10x faster than the pure-Python one, which matters when the DAG processor reads
# thousands of feed files within its per-file parse timeout.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def explain(error: ValidationError) -> str:
    parts = []
    for err in error.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(file)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        parts.append(f"field '{where}': {msg}" if err["loc"] else msg)
    return "; ".join(parts)


def _validate(path: Path, doc, model: type[M], what: str) -> M:
    """``path`` is already absolute and resolved."""
    if not isinstance(doc, dict):
        raise ConfigError(f"a {what} file must hold a mapping of fields", file=str(path))
    try:
        return model(**doc, source_file=path)
    except ValidationError as exc:
        raise ConfigError(explain(exc), file=str(path)) from None


def _parse(path: Path):
    try:
        return yaml.load(Path(path).read_text(), Loader=_LOADER)  # noqa: S506 - a safe loader (C or pure)
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", file=str(path)) from None


def load_model(path: Path, model: type[M], what: str) -> M:
    """One YAML configuration file validated into a pydantic model; errors name the file and the field."""
    return _validate(Path(path).resolve(), _parse(path), model, what)


def _docs_cache(folder: Path) -> Path | None:
    """Where parsed YAML documents of a folder are cached (under GPDATA_HOME), or None without a home."""
    import hashlib

    home = os.environ.get("GPDATA_HOME")
    if not home:
        return None
    tag = hashlib.sha256(str(Path(folder).resolve()).encode()).hexdigest()[:16]
    return Path(home) / "cache" / f"yaml-{tag}.json"


def _read_docs(folder: Path, paths: list[Path], problems: list | None = None) -> dict[Path, object]:
    """Each file's parsed YAML, reusing the cache for files whose size and modification time are unchanged
    (the DAG processor re-reads thousands of feed files every few minutes; parsing them is the slow part)."""
    import json

    cache_path = _docs_cache(folder)
    cached = {}
    if cache_path and cache_path.exists():
        try:
            cached = json.loads(cache_path.read_text())
        except (OSError, ValueError):
            cached = {}
    docs, fresh, changed = {}, {}, False
    stats = {e.name: e.stat() for e in os.scandir(folder)}
    for path in paths:
        st = stats[path.name]
        stamp = [st.st_mtime_ns, st.st_size]
        entry = cached.get(path.name)
        if entry and entry[0] == stamp:
            docs[path] = entry[1]
        else:
            try:
                docs[path] = _parse(path)
            except ConfigError as exc:
                if problems is None:
                    raise
                docs[path] = exc  # reported by the caller; never cached
                continue
            changed = True
        fresh[path.name] = [stamp, docs[path]]
    if cache_path and (changed or len(fresh) != len(cached)):
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_path.with_name(f".{cache_path.name}.{os.getpid()}")
            tmp.write_text(json.dumps(fresh, default=str))
            os.replace(tmp, cache_path)
        except OSError:
            pass  # a read-only home only loses the speed-up
    return docs


def load_folder(folder: Path, loader: Callable[[Path], M], key: str, what: str, label: str,
                model: type[M] | None = None, problems: list[ConfigError] | None = None) -> list[M]:
    """Every ``*.yaml``/``*.yml`` file of a folder through ``loader`` (or, faster, validated into ``model`` from
    cached YAML), sorted by ``key``; a repeated key is an error naming both files.

    With ``problems`` (a list), a file that cannot be read or validated is left out and its error appended
    instead of raised, so one broken file disables only itself; files sharing a key are all left out (which of
    them is right cannot be told), each with an error naming the other."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{what} folder {folder} does not exist")
    root = folder.resolve()
    paths = [root / n for n in sorted(e.name for e in os.scandir(root)
                                      if e.name.endswith((".yaml", ".yml")) and e.is_file())]
    docs = _read_docs(root, paths, problems) if model is not None else {}
    found: dict[str, M] = {}
    clashes: dict[str, list[M]] = {}
    for path in paths:
        try:
            if model is not None and isinstance(docs[path], ConfigError):
                raise docs[path]
            item = _validate(path, docs[path], model, what) if model is not None else loader(path)
        except ConfigError as exc:
            if problems is None:
                raise
            problems.append(exc)
            continue
        value = getattr(item, key)
        if value in found or value in clashes:
            if problems is None:
                raise ConfigError(f"duplicate {label} {value}, also in {found[value].source_file}", file=str(path))
            clashes.setdefault(value, [found.pop(value)] if value in found else []).append(item)
            continue
        found[value] = item
    for value, items in clashes.items():
        for item in items:
            others = ", ".join(str(o.source_file) for o in items if o is not item)
            problems.append(ConfigError(f"duplicate {label} {value}, also in {others}; none of these files is used",
                                        file=str(item.source_file)))
    return [found[k] for k in sorted(found)]
