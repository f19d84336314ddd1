"""The data: GLUE TSV folders (every header and label, file:line of the first bad row), CIFAR
ImageFolder trees, or what will be downloaded."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from akd_ray.config import Study
from akd_ray.preflight.errors import PreflightError, field_of
from akd_ray.preflight.models import hub_cached, hub_reachable
from akd_ray.preflight.storage import check_writable

GLUE_HUB_DATASET = "nyu-mll/glue"


def check_data(study: Study, downloads: list[str], notes: list[str]) -> None:
    task = study.task
    check_unlabelled(study)
    if task.is_glue:
        name = task.name.removeprefix("glue/")
        if task.data_dir is not None:
            notes += check_glue_folder(Path(task.data_dir), name, field_of(study, "task.data_dir"))
        else:
            where = field_of(study, "task.data_dir")
            if importlib.util.find_spec("datasets") is None:
                raise PreflightError(f"{where}: not set, and GLUE from the hub needs the `datasets` package: "
                                     "pip install 'akd-ray[hub]', or set task.data_dir to a local GLUE folder")
            if not hub_cached(GLUE_HUB_DATASET, "dataset"):
                hub_reachable(GLUE_HUB_DATASET, where, "dataset")
                downloads.append(f"GLUE {name} from the hub ({GLUE_HUB_DATASET})")
    elif task.name in ("cifar10", "cifar100"):
        if task.data_dir is not None:
            check_image_folder(Path(task.data_dir), task.name, field_of(study, "task.data_dir"))
        else:
            archive = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}[task.name]
            if not (Path(task.download_dir).expanduser() / archive).is_dir():
                check_writable(Path(task.download_dir).expanduser(), field_of(study, "task.download_dir"))
                downloads.append(f"{task.name} (about 170 MB) from torchvision into {task.download_dir}")


def check_glue_folder(data_dir: Path, task: str, where: str) -> list[str]:
    """Every TSV the GLUE loader will read: header, fields, labels. Returns notes (skipped rows)."""
    from akd_ray.tasks.glue import GLUE_FORMATS  # torch: only for GLUE studies

    fmt = GLUE_FORMATS[task]
    folder = data_dir / fmt.folder
    if not folder.is_dir():
        raise PreflightError(f"{where}: {data_dir} has no {fmt.folder}/ folder (the official GLUE layout: "
                             f"{fmt.folder}/train.tsv and {fmt.folder}/{fmt.evals['test'][0]})")
    files = [folder / "train.tsv", *([folder / "val.tsv"] if (folder / "val.tsv").is_file() else []),
             *(folder / f for f, _ in fmt.evals.values())]
    return [n for f in files for n in _check_tsv(f, fmt, where)]


def _check_tsv(path: Path, fmt, where: str) -> list[str]:
    """One GLUE TSV as the loader reads it (tab-separated, no quoting, UTF-8 with or without a BOM)."""
    if not path.is_file():
        raise PreflightError(f"{path}: {'a folder, expected a TSV file' if path.is_dir() else 'no such file'} "
                             f"(the GLUE layout under {where})")
    raw = path.read_bytes()
    try:
        raw.decode("utf-8-sig")  # first, to name the line of a bad byte
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise PreflightError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x})") from None
    from akd_ray.tasks.glue import tsv_rows

    try:
        data, short, needed = tsv_rows(path, fmt)
    except ValueError as e:
        raise PreflightError(str(e)) from None
    for line, fields in data:
        value = fields[-1]
        if fmt.classes is not None and value not in fmt.classes:
            raise PreflightError(f"{path}:{line}: label {value!r} in column {fmt.label!r} is not one "
                                 f"of {list(fmt.classes)}")
        if fmt.classes is None:
            try:
                float(value)
            except ValueError:
                raise PreflightError(f"{path}:{line}: {fmt.label!r} {value!r} is not a number") from None
    rows = len(data)
    if not rows:
        raise PreflightError(f"{path}: no data rows" + (f" ({len(short)} row(s) with fewer than {needed} fields, "
                                                        f"first at line {short[0]})" if short else ""))
    return [f"{path}: {len(short)} row(s) with fewer than {needed} fields are skipped (first at line {short[0]})"] \
        if short else []


def check_image_folder(root: Path, name: str, where: str) -> None:
    """An ImageFolder tree `train/<class>/*`, `test/<class>/*`: the classes, one readable 32x32 image each."""
    from PIL import Image, UnidentifiedImageError

    expected = {"cifar10": 10, "cifar100": 100}[name]
    classes = {}
    for part in ("train", "test"):
        folder = root / part
        if not folder.is_dir():
            raise PreflightError(f"{where}: {root} has no {part}/ folder (an ImageFolder tree: train/<class>/*, "
                                 "test/<class>/*)")
        found = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
        if len(found) != expected:
            raise PreflightError(f"{folder}: {len(found)} class folder(s); {name} has {expected} ({where})")
        for cls in found:
            images = sorted(f for f in (folder / cls).iterdir() if f.is_file() and not f.name.startswith("."))
            if not images:
                raise PreflightError(f"{folder / cls}: no images ({where})")
            try:
                with Image.open(images[0]) as im:
                    size = im.size
                    im.convert("RGB").load()
            except (OSError, UnidentifiedImageError) as e:
                raise PreflightError(f"{images[0]}: not a readable image ({type(e).__name__}) ({where})") from None
            if size != (32, 32):
                raise PreflightError(f"{images[0]}: a {size[0]}x{size[1]} image; {name} images are 32x32 ({where})")
        classes[part] = found
    if classes["train"] != classes["test"]:
        diff = sorted(set(classes["train"]) ^ set(classes["test"]))
        raise PreflightError(f"{where}: train/ and test/ have different class folders: {diff}")


# ---------------------------------------------------------------------------------------- few labels
def check_unlabelled(study: Study) -> None:
    """Few labels: the labelled budget against the training rows and the classes, the extra unlabelled
    source's format, and each teacher's `train_on` against what it can read."""
    task = study.task
    for name, teacher in study.teachers.items():
        if "train_on" not in teacher.model_fields_set:
            continue
        where = field_of(study, f"teachers.{name}.train_on")
        if teacher.prepare == "load":
            raise PreflightError(f"{where}: a teacher with prepare: load was trained elsewhere, on labels akd-ray "
                                 "cannot choose; remove train_on (valid only with prepare: train)")
        if teacher.train_on == "labelled" and task.labelled_samples is None:
            raise PreflightError(f"{where}: labelled, but every training row is labelled (task.labelled_samples is "
                                 "not set); set task.labelled_samples, or train_on: all")
    if task.unlabelled is not None:
        check_unlabelled_source(study)
    if task.labelled_samples is not None:
        check_label_budget(study)


def check_label_budget(study: Study) -> None:
    from akd_ray.tasks import train_labels  # torch

    task, n = study.task, study.task.labelled_samples
    where = field_of(study, "task.labelled_samples")
    labels = train_labels(task)
    if labels is not None and n > len(labels):
        raise PreflightError(f"{where}: {n} labelled rows, but the training split has {len(labels)} rows (after "
                             "task.val_fraction and task.max_train_samples); valid: 1 to " f"{len(labels)}")
    classes = _classes(task.name) if labels is None else len(labels.unique()) if not labels.is_floating_point() else 1
    if n < classes:
        raise PreflightError(f"{where}: {n} labelled rows, fewer than the {classes} classes; each class needs at "
                             f"least one (valid: {classes} or more)")


def _classes(task: str) -> int:
    if task.startswith("glue/"):
        from akd_ray.tasks.glue import GLUE_FORMATS
        fmt = GLUE_FORMATS[task.removeprefix("glue/")]
        return 1 if fmt.classes is None else len(fmt.classes)
    return {"digits": 10, "cifar10": 10, "cifar100": 100}[task]


def check_unlabelled_source(study: Study) -> None:
    """`task.unlabelled`: a UTF-8 TSV with the GLUE task's text columns, or a folder of readable 32x32 images."""
    task = study.task
    path, where = Path(task.unlabelled), field_of(study, "task.unlabelled")
    if task.is_glue:
        from akd_ray.tasks.glue import GLUE_FORMATS, tsv_rows

        fmt = GLUE_FORMATS[task.name.removeprefix("glue/")]
        try:
            path.read_bytes().decode("utf-8-sig")
            rows, _, _ = tsv_rows(path, fmt, unlabelled=True)
        except UnicodeDecodeError:
            raise PreflightError(f"{where}: {path} is not UTF-8 text; expected a TSV with the column(s) "
                                 f"{list(fmt.text)}") from None
        except ValueError as e:
            raise PreflightError(f"{where}: {e} (a TSV of unlabelled rows needs a header with {list(fmt.text)})") from None
        if not rows:
            raise PreflightError(f"{where}: {path} has no data rows under its header")
    elif task.name in ("cifar10", "cifar100"):
        from PIL import Image, UnidentifiedImageError

        files = sorted(f for f in path.rglob("*") if f.is_file() and not f.name.startswith("."))
        if not files:
            raise PreflightError(f"{where}: {path} holds no images; expected a folder of 32x32 images")
        for f in files:
            try:
                with Image.open(f) as im:
                    size = im.size
            except (OSError, UnidentifiedImageError) as e:
                raise PreflightError(f"{where}: {f} is not a readable image ({type(e).__name__}); expected a folder "
                                     "of 32x32 images") from None
            if size != (32, 32):
                raise PreflightError(f"{where}: {f} is a {size[0]}x{size[1]} image; {task.name} images are 32x32")
    else:
        raise PreflightError(f"{where}: {task.name} has no extra unlabelled source (valid for GLUE tasks: a TSV; "
                             "for cifar10/cifar100: a folder of images); use task.labelled_samples alone")
