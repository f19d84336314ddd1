"""Search spaces: a `search_spaces/*.yaml` file (plain data) -> an Optuna define-by-run function.

    params:                       # asked in this order
      tau_max: {type: int, low: 2, high: 10, methods: [annealing, prokd]}
      schedule: {type: categorical, choices: [step, linear, cosine, exp], methods: [annealing, prokd]}
      decay: {type: float, low: 0.5, high: 8, log: true, when: {schedule: [exp]}}
      lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}

A parameter is asked only for the methods it lists (all when omitted) and only when every `when`
condition on an earlier categorical parameter holds. Names are `TrainSpec` fields; every value the
space can produce is checked against the schema when the file is loaded.

A study with a student `family` also searches the student's size: `student.<field>` names a field of
the family's model kind (config.FAMILY_FIELDS), e.g.

      student.hidden: {type: int, low: 4, high: 64, log: true}       # mlp: every layer's width
      student.depth: {type: categorical, choices: [8, 14, 20, 32]}   # resnet: 6n+2
      student.layers: {type: int, low: 1, high: 6}                   # hf_truncate / hf_config

`check_family` checks those against the family's kind before anything starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, ValidationError, model_validator

from akd_ray.config import (FAMILY_FIELDS, METHODS, ConfigError, FamilySpec, Frozen, Origins, Study, TrainSpec,
                            format_errors, load_yaml)

if TYPE_CHECKING:  # optuna is needed only when a search runs, not to read a space
    import optuna

STUDENT = "student."  # search-space names of student-family fields


class Param(Frozen):
    type: Literal["int", "float", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)
    choices: tuple[Any, ...] | None = None
    methods: tuple[Literal[METHODS], ...] = METHODS  # type: ignore[valid-type]
    when: dict[str, tuple[Any, ...]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _shape(self) -> "Param":
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs a non-empty `choices` list")
            if self.low is not None or self.high is not None or self.log:
                raise ValueError("categorical takes `choices`, not low/high/log")
        else:
            if self.low is None or self.high is None:
                raise ValueError(f"{self.type} needs `low` and `high`")
            if self.low > self.high:
                raise ValueError(f"low ({self.low}) > high ({self.high})")
            if self.log and self.low <= 0:
                raise ValueError(f"log scale needs low > 0, got {self.low}")
            if self.log and self.step is not None:
                raise ValueError("`step` and `log` cannot be combined")
            if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
                raise ValueError(f"int needs whole bounds, got {self.low}..{self.high}")
            if self.type == "int" and self.step is not None and self.step != int(self.step):
                raise ValueError(f"int needs a whole `step`, got {self.step}")
            if self.choices is not None:
                raise ValueError(f"{self.type} takes low/high, not `choices`")
        if not self.methods:
            raise ValueError("`methods` is empty")
        return self

    def values(self) -> list[Any]:
        """The extreme values the parameter can take: what the schema check tries."""
        if self.type == "categorical":
            return list(self.choices)
        cast = int if self.type == "int" else float
        return [cast(self.low), cast(self.high)]


class Space(Frozen):
    params: dict[str, Param] = Field(min_length=1)
    source: Path | None = None

    @model_validator(mode="after")
    def _names_and_conditions(self) -> "Space":
        seen: list[str] = []
        for name, p in self.params.items():
            if name not in TrainSpec.model_fields and not name.startswith(STUDENT):
                raise ValueError(f"params.{name}: not a training field; valid: {', '.join(TrainSpec.model_fields)}"
                                 f", or student.<field> of a student family")
            for other, allowed in p.when.items():
                if other not in seen or self.params[other].type != "categorical":
                    raise ValueError(f"params.{name}.when: {other!r} must be a categorical parameter listed earlier")
                bad = [v for v in allowed if v not in self.params[other].choices]
                if bad:
                    raise ValueError(f"params.{name}.when.{other}: {bad} not among its choices {list(self.params[other].choices)}")
            for v in ([] if name.startswith(STUDENT) else p.values()):  # every value the schema accepts
                try:
                    TrainSpec.model_validate({name: v})
                except ValidationError as e:
                    raise ValueError(f"params.{name}: value {v!r} is not valid: {e.errors()[0]['msg']}") from None
            seen.append(name)
        return self

    def for_method(self, method: str) -> dict[str, Param]:
        return {n: p for n, p in self.params.items() if method in p.methods}

    @property
    def student_fields(self) -> dict[str, Param]:
        """The searched student-family fields, by field name (`hidden` for `student.hidden`)."""
        return {n.removeprefix(STUDENT): p for n, p in self.params.items() if n.startswith(STUDENT)}


def student_values(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's student-family values, by field name, from its config (`student.hidden` -> `hidden`)."""
    return {k.removeprefix(STUDENT): v for k, v in config.items() if k.startswith(STUDENT)}


def _every_value(p: Param) -> list[Any]:
    """Each value an int or categorical parameter can take (a float's ends): what a family check tries."""
    if p.type == "int" and (p.high - p.low) / (p.step or 1) <= 4096:
        return list(range(int(p.low), int(p.high) + 1, int(p.step or 1)))
    return p.values()


def check_student_fields(space: Space, study: Study) -> None:
    """A family study's space against its family (`check_family`); a study of named students must
    not name student fields (they would be silently ignored)."""
    if study.family is not None:
        check_family(space, study.family, study.source)
    elif space.student_fields:
        raise ConfigError(f"{space.source}: params.{STUDENT}{next(iter(space.student_fields))}: student fields are "
                          f"searched only in a study with a `family` ({study.source} names students)")


def check_family(space: Space, family: FamilySpec, study_source: Any = None) -> None:
    """Every student the space can draw is a valid model of the family's kind: fields the kind has,
    values its schema takes (a ResNet depth 6n+2 among the built ones; heads dividing hidden_size).
    Errors name the space file and the `params.student.<field>` (or the study's `family.model`)."""
    kind = family.model.kind
    fields = space.student_fields
    if not fields:
        raise ConfigError(f"{space.source}: a study with a `family` ({study_source}) searches student size, but the "
                          f"space names no student field; add e.g. params.student.{FAMILY_FIELDS.get(kind, ('?',))[0]}")
    for field, p in fields.items():
        where = f"{space.source}: params.{STUDENT}{field}"
        if field not in FAMILY_FIELDS.get(kind, ()):
            valid = ", ".join(f"{STUDENT}{f}" for f in FAMILY_FIELDS.get(kind, ())) or "none"
            raise ConfigError(f"{where}: a {kind!r} student has no field {field!r}; valid: {valid}")
        if p.type == "float":
            raise ConfigError(f"{where}: a model size is whole: use type int or categorical")
        for v in _every_value(p):
            if kind == "resnet" and field == "depth" and (not isinstance(v, int) or v < 8 or (v - 2) % 6):
                raise ConfigError(f"{where}: depth {v!r} is not 6n+2 (a CIFAR ResNet: 8, 14, 20, 32, 44, 56, 110)")
            try:
                family.student({field: v})
            except ValidationError as e:
                err = e.errors()[0]
                msg = (f"got {v!r}; valid: {err['ctx']['expected']}" if err["type"] == "literal_error"
                       else f"value {v!r} is not valid: {err['msg']}")
                raise ConfigError(f"{where}: {msg}") from None
    if kind == "hf_config" and ("heads" in fields or "hidden_size" in fields):
        hidden = _every_value(fields["hidden_size"]) if "hidden_size" in fields else [family.model.hidden_size]
        heads = _every_value(fields["heads"]) if "heads" in fields else [family.model.heads]
        for h in hidden:
            for n in heads:
                if h is not None and n is not None and h % n:
                    field = "heads" if "heads" in fields else "hidden_size"
                    raise ConfigError(f"{space.source}: params.{STUDENT}{field}: heads {n} do not divide "
                                      f"hidden_size {h}; every drawn pair must divide evenly")


def load_space(path: Path) -> Space:
    data, lines = load_yaml(Path(path), "search space")
    data["source"] = str(path)
    try:
        return Space.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_errors(Origins(str(path), lines), e, data, Space)) from None


class DefineByRun:
    """The Optuna define-by-run function of `space` for one method (a class so searchers pickle)."""

    def __init__(self, space: Space, method: str):
        self.params = space.for_method(method)

    def __call__(self, trial: optuna.Trial) -> None:
        chosen: dict[str, Any] = {}
        for name, p in self.params.items():
            if any(chosen.get(other) not in allowed for other, allowed in p.when.items()):
                continue
            if p.type == "categorical":
                chosen[name] = trial.suggest_categorical(name, list(p.choices))
            elif p.type == "int":
                chosen[name] = trial.suggest_int(name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
            else:
                chosen[name] = trial.suggest_float(name, p.low, p.high, step=p.step, log=p.log)


define_by_run = DefineByRun


def sample(space: Space, method: str, trial: optuna.Trial) -> dict[str, Any]:
    """Run the define-by-run function on `trial` (e.g. optuna.trial.FixedTrial) and return the values."""
    define_by_run(space, method)(trial)
    return dict(trial.params)
