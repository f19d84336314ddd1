"""The search against the study: the space, the levers each model can serve, budgets, the global batch."""

from __future__ import annotations

from akd_ray.config import (KNOBS, RECIPE_KNOBS, ConfigError, ModelSpec, Origins, Study, TrainSpec, levers, load_yaml,
                            method_knobs, two_stage)
from akd_ray.method.schedules import stage_split, step_period
from akd_ray.preflight.errors import PreflightError, field_of
from akd_ray.space import STUDENT, Space, check_student_fields, load_space


def check_space(study: Study) -> Space:
    """The search space, and the space against the study: what the schema alone cannot see."""
    space = load_space(study.search.space)
    where = f"{study.source}"
    check_student_fields(space, study)
    check_knob_owners(space, study)
    for method in study.search.methods:
        params = space.for_method(method)
        if two_stage(method):
            train = study.train
            taus = params["tau_max"].values() if "tau_max" in params else [train.tau_max]
            fractions = params["stage1_fraction"].values() if "stage1_fraction" in params else [train.stage1_fraction]
            epochs = params["epochs"].values() if "epochs" in params else [train.epochs]
            shapes = params["schedule"].values() if "schedule" in params else [train.schedule]
            if "step" in shapes and "tau_max" in params and params["tau_max"].type != "int":
                raise ConfigError(f"{space.source}: params.tau_max: the step schedule needs an integer tau_max; "
                                  "use type: int, or drop step from the schedule choices")
            if "step" in shapes:
                first = min(stage_split(int(e), f)[0] for e in epochs for f in fractions)
                if step_period(first, int(max(taus))) < 1:
                    raise ConfigError(
                        f"{where}: train.epochs/stage1_fraction leave {first} stage-I epoch(s), fewer than "
                        f"tau_max up to {max(taus)} (search space {space.source}): the step schedule needs "
                        f"one epoch per temperature; raise train.epochs or lower tau_max's high")
    for i, point in enumerate(study.search.warm_start):
        unknown = {k for k in point if k not in TrainSpec.model_fields
                   and not (study.family is not None and k.startswith(STUDENT))}
        if unknown:
            raise ConfigError(f"{where}: search.warm_start[{i}]: unknown field(s) {sorted(unknown)}")
    return space


def check_knob_owners(space: Space, study: Study) -> None:
    """Every searched knob goes only to methods that read it (config.KNOBS + RECIPE_KNOBS, the table the
    verdict uses): a knob a method ignores would spend that method's budget searching nothing. Fields no
    method owns (e.g. `epochs`) and student-family fields are not in the table and pass."""
    owned = {k for knobs in KNOBS.values() for k in knobs} | set(RECIPE_KNOBS)
    asked: dict[str, set[str]] = {}  # the methods a parameter is really asked for: a `when` on a parameter
    for name, p in space.params.items():  # a method never gets (decay on schedule) leaves it out too
        asked[name] = set(p.methods).intersection(*(asked[other] for other in p.when))
        if name not in owned:
            continue
        ignoring = [m for m in study.search.methods if m in asked[name] and name not in method_knobs(m)]
        if not ignoring:
            continue
        users = [m for m in KNOBS if name in method_knobs(m)]
        _, lines = load_yaml(space.source, "search space")
        where = Origins(str(space.source), lines).of(("params", name, "methods"))
        listed = "lists" if "methods" in p.model_fields_set else "omits `methods`, so it goes to every method, including"
        raise ConfigError(f"{where}: params.{name}: {listed} {', '.join(ignoring)}, which never read{'s' * (len(ignoring) == 1)} "
                          f"{name}; it is read by {', '.join(users)}: set methods to those of the study among them")


def lever_refusal(method: str, model: ModelSpec, role: str) -> str | None:
    """Why `model` (as `role`: teacher or student) cannot give what `method`'s levers need; None if it can."""
    for lever in levers(method):
        layered = model.hidden if model.kind == "mlp" else model.channels if model.kind == "cnn" else True
        if lever == "layers" and not layered:
            return f"method {method!r} matches hidden layers, but this {model.kind} {role} has none; give it one"
        if role == "student" and model.kind == "hf":
            return (f"method {method!r} runs the teacher on the student's inputs, but an hf student reads its own "
                    f"tokenizer ({model.path}), not the teacher's; use kind hf_truncate or hf_config")
    return None


def check_levers(study: Study) -> None:
    """Refuse a lever method for a teacher or student that cannot give what the lever needs."""
    models = [*((f"teachers.{k}.model", "teacher", t.model) for k, t in study.teachers.items()),
              *((f"students.{k}", "student", s) for k, s in study.students.items()),
              *([("family.model", "student", study.family.model)] if study.family else [])]
    for method in study.search.methods:
        for where, role, model in models:
            why = lever_refusal(method, model, role)
            if why:
                raise PreflightError(f"{study.source}: {where}: {why}")


def budgets(study: Study, space: Space) -> dict[str, int]:
    """Trials per pair for each method: the study's budget, or one for a method the space leaves
    nothing to search for (its trials would all be the same run)."""
    return {m: (n if space.for_method(m) else 1) for m, n in study.search.trials.items()}


def check_batch_split(study: Study) -> None:
    """`train.batch_size` is the global batch: with several workers each trial takes an equal share per
    rank (see akd_ray.engine), so it must divide by `resources.workers`. (Teachers train in one process.)"""
    workers = study.resources.workers
    if workers <= 1:
        return
    for field_, size in [("train.batch_size", study.train.batch_size)]:
        if size % workers:
            low, high = size - size % workers, size - size % workers + workers
            raise PreflightError(f"{field_of(study, field_)}: {size} is the global batch and does not split over "
                                 f"resources.workers = {workers}; use a multiple of {workers} "
                                 f"(e.g. {low or high} or {high})")
