"""Every model: a local folder or weights file holds a loadable model; a hub id is cached or answers now."""

from __future__ import annotations

from pathlib import Path

from akd_ray.config import Study
from akd_ray.preflight.errors import PreflightError, field_of

HUB_TIMEOUT_S = 5.0  # one request to the hub per model that is not cached; no retries
STATE_DICT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")  # what akd_ray.teacher imports (a test keeps them equal)


def check_models(study: Study, downloads: list[str]) -> None:
    """Every model a study names: local folders hold a model, hub ids are cached or the hub has them."""
    specs = [(f"teachers.{n}.model", t.model) for n, t in study.teachers.items()]
    specs += [(f"students.{n}", s) for n, s in study.students.items()]
    specs += [("assistant", study.assistant)] if study.assistant is not None else []
    for field_, spec in specs:
        if spec.kind != "hf":
            continue
        where = field_of(study, f"{field_}.path")
        if Path(spec.path).is_absolute():
            if not (Path(spec.path) / "config.json").is_file():
                raise PreflightError(f"{where}: {spec.path} is not a transformers model folder (no config.json)")
        elif not hub_cached(spec.path, "model"):
            hub_reachable(spec.path, where, "model")
            downloads.append(f"{spec.path} from the hub")
    for name, t in study.teachers.items():
        p = None if t.path is None else Path(t.path)
        if p is None:
            continue
        if p.is_file() and p.suffix in STATE_DICT_SUFFIXES:
            check_weights(p, field_of(study, f"teachers.{name}.path"))
            continue
        if p.is_file() or not ((p / "model.json").is_file() or (p / "config.json").is_file()
                               or any(f.suffix in STATE_DICT_SUFFIXES for f in p.iterdir() if f.is_file())):
            raise PreflightError(f"{field_of(study, f'teachers.{name}.path')}: {p} holds no trained model (an akd-ray "
                                 f"or transformers folder, or a state dict: {', '.join(STATE_DICT_SUFFIXES)})")
        check_weights(p, field_of(study, f"teachers.{name}.path"))


def check_weights(path: Path, where: str) -> None:
    """Every weights file a teacher import will read opens as what it claims: a safetensors header, or a
    `torch.load(weights_only=True)` dict of tensors (memory-mapped: nothing is read in full). A corrupt
    file, or one that holds something else, is refused here instead of deep inside `tune`."""
    if path.is_dir():
        files = sorted(f for f in path.iterdir() if f.is_file() and f.suffix in STATE_DICT_SUFFIXES)
    else:
        files = [path]
    for f in files:
        reason = _weights_problem(f)
        if reason:
            raise PreflightError(f"{where}: {f} holds no loadable model ({reason})")


def _weights_problem(f: Path) -> str | None:
    if f.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(f), framework="pt") as weights:
                return None if list(weights.keys()) else "a safetensors file with no tensors"
        except Exception as e:  # SafetensorError, OSError: a truncated or foreign file
            return f"not a safetensors file: {str(e).splitlines()[0][:120] if str(e) else type(e).__name__}"
    import torch

    try:
        state = torch.load(f, weights_only=True, map_location="cpu", mmap=True)
    except RuntimeError as e:
        if "mmap" not in str(e):  # the old (non-zip) format cannot be mapped: read it
            return _load_problem(e)
        try:
            state = torch.load(f, weights_only=True, map_location="cpu")
        except Exception as e2:
            return _load_problem(e2)
    except Exception as e:
        return _load_problem(e)
    if isinstance(state, dict):
        state = state.get("state_dict", state.get("model", state))
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return f"torch.load gives a {type(state).__name__}, not a state dict (names -> tensors)"
    return None


def _load_problem(e: Exception) -> str:
    text = str(e).strip().splitlines()
    first = next((line for line in text if line.strip()), type(e).__name__)
    if "Weights only load failed" in first or "weights_only" in first:
        return "torch.load(weights_only=True) refuses it: a pickle of something other than tensors"
    return f"torch.load fails: {first[:160]}"


def hub_cached(repo_id: str, repo_type: str) -> bool:
    from huggingface_hub import constants

    folder = Path(constants.HF_HUB_CACHE) / f"{repo_type}s--{repo_id.replace('/', '--')}"
    return (folder / "snapshots").is_dir() and any((folder / "snapshots").iterdir())


def hub_reachable(repo_id: str, where: str, repo_type: str) -> None:
    """The hub has `repo_id`, asked once with a short timeout; HF_HUB_OFFLINE means unreachable."""
    from huggingface_hub import constants
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise PreflightError(f"{where}: {repo_id!r} is neither a folder (beside the study file) nor a hub id "
                             "(org/name)") from None
    if constants.HF_HUB_OFFLINE:
        raise PreflightError(f"{where}: not in the local cache and the hub is unreachable (HF_HUB_OFFLINE is "
                             f"set): {repo_id}")
    import requests

    url = f"{constants.ENDPOINT}/api/{repo_type}s/{repo_id}"
    try:
        answer = requests.get(url, timeout=HUB_TIMEOUT_S)
    except requests.RequestException:
        raise PreflightError(f"{where}: not in the local cache and the hub is unreachable: {repo_id}") from None
    if answer.status_code in (401, 403, 404):
        raise PreflightError(f"{where}: the hub has no {repo_type} {repo_id!r} (or it is private); check the id")
    if answer.status_code != 200:
        raise PreflightError(f"{where}: the hub answered HTTP {answer.status_code} for {repo_id}")
