"""Search spaces: a `search_spaces/*.yaml` file (plain data) -> an Optuna define-by-run function.

    params:                       # asked in this order
      tau_max: {type: int, low: 2, high: 10, methods: [annealing, prokd]}
      schedule: {type: categorical, choices: [step, linear, cosine, exp], methods: [annealing, prokd]}
      decay: {type: float, low: 0.5, high: 8, log: true, when: {schedule: [exp]}}
      lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}

A parameter is asked only for the methods it lists (all when omitted) and only when every `when`
condition on an earlier categorical parameter holds. Names are `TrainSpec` fields; every value the
space can produce is checked against the schema when the file is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, ValidationError, model_validator

from akd_ray.config import METHODS, ConfigError, Frozen, Origins, TrainSpec, format_errors, load_yaml

if TYPE_CHECKING:  # optuna is needed only when a search runs, not to read a space
    import optuna


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
            if name not in TrainSpec.model_fields:
                raise ValueError(f"params.{name}: not a training field; valid: {', '.join(TrainSpec.model_fields)}")
            for other, allowed in p.when.items():
                if other not in seen or self.params[other].type != "categorical":
                    raise ValueError(f"params.{name}.when: {other!r} must be a categorical parameter listed earlier")
                bad = [v for v in allowed if v not in self.params[other].choices]
                if bad:
                    raise ValueError(f"params.{name}.when.{other}: {bad} not among its choices {list(self.params[other].choices)}")
            for v in p.values():  # every value must be one the schema accepts
                try:
                    TrainSpec.model_validate({name: v})
                except ValidationError as e:
                    raise ValueError(f"params.{name}: value {v!r} is not valid: {e.errors()[0]['msg']}") from None
            seen.append(name)
        return self

    def for_method(self, method: str) -> dict[str, Param]:
        return {n: p for n, p in self.params.items() if method in p.methods}


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
