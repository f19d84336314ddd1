"""A changed study detected on rerun: the fingerprint of what decides the search's results. No Ray.

`tune` keeps `<storage>/<name>/fingerprint.json`: every field of the study that changes what a search
or confirmation run trains, and the search space's parameters. A rerun whose fingerprint differs
would resume the old search (Tune restores it as it was), so it is refused in one line naming what
changed; `--fresh` starts over in the same storage and keeps the old results under a dated name. Where
results go (`storage`, `mlflow`, `search.optuna_storage`), the machine (`resources`) and the name are
not part of it: moving a study or giving it more CPUs resumes it.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path
from typing import Any

from akd_ray.config import ConfigError, Study
from akd_ray.space import Space

FINGERPRINT_FILE = "fingerprint.json"
KEPT_ON_FRESH = ("study.lock", "teachers", "cache")  # the lock, and what is keyed by its own fingerprint
_NOT_SEARCH = ("name", "storage", "mlflow", "resources", "source")
_NOT_SEARCH_FIELDS = ("space", "optuna_storage")  # of `search`: where the space file is, where Optuna writes


class StudyChanged(ConfigError):
    """The study or its space changed since its results were made: `tune` refuses (exit 2)."""


def parts(study: Study, space: Space) -> dict[str, Any]:
    """What decides the results, flattened to `field.path -> value` (the space's under `space.params...`)."""
    data = study.model_dump(mode="json", exclude=set(_NOT_SEARCH))
    data["search"] = {k: v for k, v in data["search"].items() if k not in _NOT_SEARCH_FIELDS}
    data["space"] = {"params": space.model_dump(mode="json")["params"]}
    return _flat(data)


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict) and node:
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: node}


def changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """`field: old -> new` for each field that differs (added or removed fields too), in field order."""
    keys = [*old, *(k for k in new if k not in old)]
    show = lambda d, k: json.dumps(d[k]) if k in d else "(none)"  # noqa: E731
    return [f"{k}: {show(old, k)} -> {show(new, k)}" for k in keys if old.get(k, ...) != new.get(k, ...)]


def check_rerun(root: Path, study: Study, space: Space, fresh: bool = False) -> Path | None:
    """Before `tune` runs the study at `root` (under its lock): refuse a changed study, start over with
    `fresh`, else record the fingerprint (results from before fingerprints are adopted as they are). Returns where the old results went (`fresh`), else None."""
    path = Path(root) / FINGERPRINT_FILE
    now = parts(study, space)
    moved = None
    if fresh:
        moved = set_aside(Path(root))
    elif path.exists():
        try:
            held = json.loads(path.read_text())["parts"]
        except (ValueError, KeyError, TypeError):
            raise StudyChanged(f"{path}: not a fingerprint akd-ray wrote; start over with `akd-ray tune "
                               f"{study.source} --fresh` (the old results are kept)") from None
        diff = changes(held, now)
        if diff:
            more = f" (and {len(diff) - 3} more)" if len(diff) > 3 else ""
            raise StudyChanged(
                f"study {study.name} changed since its results in {root} were made: {'; '.join(diff[:3])}{more}. "
                f"Start over with `akd-ray tune {study.source} --fresh` (the old results are kept under a dated "
                f"name), or give it another storage (--set storage=...)")
    digest = hashlib.sha256(json.dumps(now, sort_keys=True).encode()).hexdigest()
    Path(root).mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"sha256": digest, "parts": now}, indent=1))
    return moved


def set_aside(root: Path) -> Path | None:
    """Move the study's results (all but KEPT_ON_FRESH) to `<storage>/<name>-<YYYYmmdd-HHMMSS>/`; None
    when there were none."""
    leaving = [p for p in root.iterdir() if p.name not in KEPT_ON_FRESH] if root.is_dir() else []
    if not leaving:
        return None
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    target = root.with_name(f"{root.name}-{stamp}")
    target.mkdir()
    for p in leaving:
        p.rename(target / p.name)
    return target
