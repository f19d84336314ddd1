"""Search spaces: files load, bad ones name file and field, and the define-by-run asks the right params."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import FixedTrial

from akd_ray.config import METHODS, ConfigError, load_study
from akd_ray.space import Space, define_by_run, load_space, sample
from akd_ray.study import validate

REPO = Path(__file__).resolve().parents[1]
SPACES = sorted((REPO / "search_spaces").glob("*.yaml"))
QUICKSTART = REPO / "studies" / "quickstart.yaml"

# A value for every training field a space may name; FixedTrial ignores the ones not asked.
EVERYTHING = {"tau_max": 3, "schedule": "exp", "decay": 2.0, "stage1_fraction": 0.5, "alpha": 0.4,
              "kd_temperature": 3.0, "lr": 0.01, "epochs": 12, "batch_size": 64, "weight_decay": 0.0,
              "momentum": 0.9, "optimizer": "adamw", "lr_schedule": "cosine", "warmup_fraction": 0.0}


def write(folder: Path, text: str, name: str = "space.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


@pytest.fixture
def optuna_quiet():
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    yield
    optuna.logging.set_verbosity(before)


# ---------------------------------------------------------------------------------------- shipped spaces
@pytest.mark.parametrize("path", SPACES, ids=[p.name for p in SPACES])
def test_every_shipped_space_loads_and_runs_for_every_method(path):
    space = load_space(path)
    for method in METHODS:
        asked = space.for_method(method)
        # EVERYTHING's values where the space allows them (they reach every `when`), else the first value
        point = {n: (EVERYTHING[n] if n in EVERYTHING and (p.type != "categorical" or EVERYTHING[n] in p.values())
                     else p.values()[0]) for n, p in asked.items()}
        got = sample(space, method, FixedTrial(point))
        assert set(got) <= set(asked)
        assert all(name in got for name, p in asked.items() if not p.when)


@pytest.mark.parametrize("path", SPACES, ids=[p.name for p in SPACES])
def test_every_shipped_space_validates_against_a_study(path):
    # Long enough a run that only the space itself can fail; every method that needs no assistant.
    study = load_study(QUICKSTART, [f"search.space={path}", "train.epochs=60",
                                    "search.trials={scratch: 1, kd: 1, annealing: 1, prokd: 1}"])
    assert validate(study).params == load_space(path).params


def test_quickstart_space_golden():
    space = load_space(REPO / "search_spaces" / "quickstart.yaml")
    assert list(space.for_method("annealing")) == ["tau_max", "schedule", "decay", "stage1_fraction", "lr"]
    assert list(space.for_method("kd")) == ["alpha", "kd_temperature", "lr"]
    assert list(space.for_method("scratch")) == ["lr"]
    assert space.params["tau_max"].values() == [2, 5]
    assert space.params["lr"].log and space.params["lr"].values() == [3.0e-3, 3.0e-2]


# ---------------------------------------------------------------------------------------- define-by-run
@pytest.fixture(scope="module")
def quickstart_space() -> Space:
    return load_space(REPO / "search_spaces" / "quickstart.yaml")


def test_decay_is_asked_only_for_the_exp_schedule(quickstart_space):
    exp = sample(quickstart_space, "annealing", FixedTrial({**EVERYTHING, "schedule": "exp"}))
    assert exp == {"tau_max": 3, "schedule": "exp", "decay": 2.0, "stage1_fraction": 0.5, "lr": 0.01}
    for shape in ("step", "linear", "cosine"):
        got = sample(quickstart_space, "annealing", FixedTrial({**EVERYTHING, "schedule": shape}))
        assert got == {"tau_max": 3, "schedule": shape, "stage1_fraction": 0.5, "lr": 0.01}


def test_kd_params_only_for_kd(quickstart_space):
    assert sample(quickstart_space, "kd", FixedTrial(EVERYTHING)) == {"alpha": 0.4, "kd_temperature": 3.0, "lr": 0.01}
    assert sample(quickstart_space, "takd", FixedTrial(EVERYTHING)) == {"alpha": 0.4, "kd_temperature": 3.0, "lr": 0.01}


def test_scratch_asks_nothing_of_annealing_or_kd(quickstart_space):
    assert sample(quickstart_space, "scratch", FixedTrial(EVERYTHING)) == {"lr": 0.01}


def test_a_condition_on_a_parameter_the_method_does_not_ask_skips(tmp_path):
    # decay is listed for every method, but its condition is on schedule, asked for annealing only
    space = load_space(write(tmp_path, """\
params:
  schedule: {type: categorical, choices: [step, exp], methods: [annealing]}
  decay: {type: float, low: 1, high: 4, when: {schedule: [exp]}}
  lr: {type: float, low: 0.001, high: 0.1}
"""))
    assert sample(space, "kd", FixedTrial(EVERYTHING)) == {"lr": 0.01}
    assert sample(space, "annealing", FixedTrial(EVERYTHING)) == {"schedule": "exp", "decay": 2.0, "lr": 0.01}


def test_a_missing_fixed_value_is_an_error(quickstart_space):
    with pytest.raises(ValueError, match="'lr' is not found"):
        sample(quickstart_space, "scratch", FixedTrial({"alpha": 0.5}))


def test_define_by_run_gives_optuna_the_declared_distributions(tmp_path, optuna_quiet):
    space = load_space(write(tmp_path, """\
params:
  tau_max: {type: int, low: 2, high: 6}
  batch_size: {type: int, low: 32, high: 128, step: 32}
  schedule: {type: categorical, choices: [step, exp]}
  decay: {type: float, low: 0.5, high: 4.0, log: true, when: {schedule: [exp]}}
  alpha: {type: float, low: 0.2, high: 0.8, step: 0.2}
  lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}
"""))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: (define_by_run(space, "annealing")(t), 0.0)[1], n_trials=30)
    D = optuna.distributions
    seen_schedules = set()
    for trial in study.trials:
        d, params = trial.distributions, trial.params
        assert d["tau_max"] == D.IntDistribution(2, 6)
        assert d["batch_size"] == D.IntDistribution(32, 128, step=32)
        assert d["schedule"] == D.CategoricalDistribution(["step", "exp"])
        assert d["alpha"] == D.FloatDistribution(0.2, 0.8, step=0.2)
        assert d["lr"] == D.FloatDistribution(1e-4, 1e-1, log=True)
        assert ("decay" in params) == (params["schedule"] == "exp")
        if "decay" in params:
            assert d["decay"] == D.FloatDistribution(0.5, 4.0, log=True)
        seen_schedules.add(params["schedule"])
    assert seen_schedules == {"step", "exp"}  # both branches were taken


def test_optuna_search_on_define_by_run_pickles(quickstart_space, optuna_quiet):
    from ray.tune.search.optuna import OptunaSearch  # Tune checkpoints its searcher by pickling it

    searcher = OptunaSearch(space=define_by_run(quickstart_space, "annealing"), metric="val_best", mode="max")
    first = searcher.suggest("trial-1")
    restored = pickle.loads(pickle.dumps(searcher))
    second = restored.suggest("trial-2")
    for point in (first, second):
        assert {"tau_max", "schedule", "stage1_fraction", "lr"} <= set(point)
        assert ("decay" in point) == (point["schedule"] == "exp")
        assert "alpha" not in point
        assert 2 <= point["tau_max"] <= 5


# ---------------------------------------------------------------------------------------- bad spaces
GOOD = {"type": "float", "low": 0.001, "high": 0.01}
SCHEDULE = {"type": "categorical", "choices": ["step", "exp"]}

BAD_SPACES = [
    # id, params, field named, key phrase
    ("categorical empty choices", {"schedule": {"type": "categorical", "choices": []}}, "params.schedule",
     "categorical needs a non-empty `choices` list"),
    ("categorical without choices", {"schedule": {"type": "categorical"}}, "params.schedule",
     "categorical needs a non-empty `choices` list"),
    ("categorical with bounds", {"schedule": {**SCHEDULE, "low": 1}}, "params.schedule",
     "categorical takes `choices`, not low/high/log"),
    ("low > high", {"lr": {"type": "float", "low": 0.1, "high": 0.01}}, "params.lr", "low (0.1) > high (0.01)"),
    ("log with low 0", {"lr": {"type": "float", "low": 0.0, "high": 0.01, "log": True}}, "params.lr",
     "log scale needs low > 0, got 0.0"),
    ("log with low < 0", {"weight_decay": {"type": "float", "low": -1, "high": 0.1, "log": True}},
     "params.weight_decay", "log scale needs low > 0, got -1.0"),
    ("missing high", {"lr": {"type": "float", "low": 0.001}}, "params.lr", "float needs `low` and `high`"),
    ("float with choices", {"lr": {**GOOD, "choices": [0.01]}}, "params.lr", "float takes low/high, not `choices`"),
    ("step and log", {"lr": {**GOOD, "log": True, "step": 0.001}}, "params.lr", "`step` and `log` cannot be combined"),
    ("int fractional bounds", {"tau_max": {"type": "int", "low": 2.5, "high": 5}}, "params.tau_max",
     "int needs whole bounds, got 2.5..5.0"),
    ("int fractional step", {"batch_size": {"type": "int", "low": 32, "high": 128, "step": 0.5}},
     "params.batch_size", "int needs a whole `step`, got 0.5"),
    ("step 0", {"lr": {**GOOD, "step": 0}}, "params.lr.step", "greater than 0"),
    ("unknown type", {"lr": {**GOOD, "type": "uniform"}}, "params.lr.type",
     "got 'uniform'; valid: 'int', 'float' or 'categorical'"),
    ("unknown key in a param", {"lr": {**GOOD, "scale": "log"}}, "params.lr.scale", "unknown key"),
    ("unknown param name", {"learning_rate": GOOD}, "params.learning_rate", "not a training field; valid: epochs"),
    ("unknown method", {"lr": {**GOOD, "methods": ["distill"]}}, "params.lr.methods[0]", "got 'distill'"),
    ("no methods", {"lr": {**GOOD, "methods": []}}, "params.lr", "`methods` is empty"),
    ("when on a later param", {"decay": {**GOOD, "when": {"schedule": ["exp"]}}, "schedule": SCHEDULE},
     "params.decay.when", "'schedule' must be a categorical parameter listed earlier"),
    ("when on a float param", {"lr": GOOD, "decay": {**GOOD, "when": {"lr": [0.001]}}},
     "params.decay.when", "'lr' must be a categorical parameter listed earlier"),
    ("when on an absent param", {"decay": {**GOOD, "when": {"schedule": ["exp"]}}},
     "params.decay.when", "'schedule' must be a categorical parameter listed earlier"),
    ("when value not a choice", {"schedule": SCHEDULE, "decay": {**GOOD, "when": {"schedule": ["cosine"]}}},
     "params.decay.when.schedule", "['cosine'] not among its choices ['step', 'exp']"),
    ("schedule zigzag", {"schedule": {"type": "categorical", "choices": ["step", "zigzag"]}}, "params.schedule",
     "value 'zigzag' is not valid: Input should be 'step', 'linear', 'cosine' or 'exp'"),
    ("alpha high 1.5", {"alpha": {"type": "float", "low": 0.1, "high": 1.5}}, "params.alpha",
     "value 1.5 is not valid: Input should be less than or equal to 1"),
    ("epochs low 1", {"epochs": {"type": "int", "low": 1, "high": 5}}, "params.epochs",
     "value 1 is not valid: Input should be greater than or equal to 2"),
    ("tau_max low 0", {"tau_max": {"type": "int", "low": 0, "high": 4}}, "params.tau_max",
     "value 0 is not valid: Input should be greater than or equal to 1"),
    ("stage1_fraction high 1", {"stage1_fraction": {"type": "float", "low": 0.5, "high": 1.0}},
     "params.stage1_fraction", "value 1.0 is not valid: Input should be less than 1"),
    ("no params", {}, "params", "at least 1 item"),
]


@pytest.mark.parametrize("params, field, phrase", [c[1:] for c in BAD_SPACES], ids=[c[0] for c in BAD_SPACES])
def test_bad_space_names_file_field_and_reason(tmp_path, params, field, phrase):
    path = write(tmp_path, yaml.safe_dump({"params": params}, sort_keys=False))
    with pytest.raises(ConfigError) as err:
        load_space(path)
    message = str(err.value)
    assert message.startswith(f"{path}:")
    assert field in message and phrase in message


@pytest.mark.parametrize("text, phrase", [
    ("params:\n  lr: {type: float, low: 0.001, high: 0.01\n", "not valid YAML"),
    ("- lr\n- tau_max\n", "expected a mapping of keys at the top level"),
    ("params: {lr: {type: float, low: 0.001, high: 0.01}}\nsampler: tpe\n", "sampler: unknown key"),
    ("params: [lr, tau_max]\n", "params: expected a mapping"),
])
def test_unreadable_space_file(tmp_path, text, phrase):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=phrase) as err:
        load_space(path)
    assert str(err.value).startswith(f"{path}:")


def test_missing_space_file(tmp_path):
    with pytest.raises(ConfigError, match=f"{tmp_path / 'none.yaml'}: no such file"):
        load_space(tmp_path / "none.yaml")


# ---------------------------------------------------------------------------------------- space vs study
def study_with(folder: Path, space: str, train: dict[str, Any] | None = None,
               trials: dict[str, int] | None = None, **extra: Any):
    write(folder, space)
    data = {"name": "tiny", "task": {"name": "digits"},
            "teachers": {"big": {"model": {"kind": "mlp"}}}, "students": {"small": {"kind": "mlp", "hidden": [4]}},
            "train": {"epochs": 12, **(train or {})},
            "search": {"space": "space.yaml", "trials": trials or {"kd": 1, "annealing": 1}, **extra}}
    path = write(folder, yaml.safe_dump(data), "study.yaml")
    return path, load_study(path)


TAU_UP_TO_10 = "params:\n  tau_max: {type: int, low: 2, high: 10, methods: [annealing, prokd]}\n"


def test_stage_one_shorter_than_tau_max_high_is_caught_before_ray(tmp_path):
    path, study = study_with(tmp_path, TAU_UP_TO_10)  # 12 epochs x 0.5 = 6 stage-I epochs < 10
    with pytest.raises(ConfigError) as err:
        validate(study)
    message = str(err.value)
    assert message.startswith(f"{path.resolve()}: train.epochs/stage1_fraction leave 6 stage-I epoch(s), "
                              "fewer than tau_max up to 10")
    assert str(tmp_path / "space.yaml") in message


def test_stage_split_check_uses_the_lowest_searched_fraction_and_epochs(tmp_path):
    space = ("params:\n"
             "  epochs: {type: int, low: 10, high: 40}\n"
             "  stage1_fraction: {type: float, low: 0.3, high: 0.7, methods: [annealing]}\n"
             "  tau_max: {type: int, low: 2, high: 4, methods: [annealing]}\n")
    _, study = study_with(tmp_path, space)  # 10 epochs x 0.3 = 3 stage-I epochs < 4
    with pytest.raises(ConfigError, match=r"leave 3 stage-I epoch\(s\), fewer than tau_max up to 4"):
        validate(study)
    _, study = study_with(tmp_path, space.replace("low: 0.3", "low: 0.4"))  # 10 x 0.4 = 4: just enough
    assert validate(study).params["tau_max"].values() == [2, 4]


@pytest.mark.parametrize("case, train, trials, space", [
    ("long enough run", {"epochs": 20}, None, TAU_UP_TO_10),
    ("no step schedule", {"schedule": "cosine"}, None, TAU_UP_TO_10),
    ("step not among the searched shapes", {}, None,
     TAU_UP_TO_10 + "  schedule: {type: categorical, choices: [linear, exp], methods: [annealing]}\n"),
    ("no annealing method", {}, {"kd": 1, "scratch": 1}, TAU_UP_TO_10),
])
def test_stage_split_check_applies_only_when_the_step_schedule_can_run(tmp_path, case, train, trials, space):
    _, study = study_with(tmp_path, space, train=train, trials=trials)
    validate(study)


def test_study_tau_max_is_checked_when_the_space_does_not_search_it(tmp_path):
    _, study = study_with(tmp_path, "params:\n  lr: {type: float, low: 0.001, high: 0.01}\n",
                          train={"epochs": 8, "tau_max": 5})
    with pytest.raises(ConfigError, match="leave 4 stage-I epoch"):
        validate(study)


def test_warm_start_with_an_unknown_field(tmp_path):
    _, study = study_with(tmp_path, TAU_UP_TO_10, train={"epochs": 30}, warm_start=[{"tau": 3}])
    with pytest.raises(ConfigError, match=r"search.warm_start\[0\]: unknown field\(s\) \['tau'\]"):
        validate(study)


def test_a_bad_space_fails_validate_naming_the_space_file(tmp_path):
    _, study = study_with(tmp_path, "params:\n  alpha: {type: float, low: 0.1, high: 1.5}\n")
    with pytest.raises(ConfigError) as err:
        validate(study)
    assert str(err.value).startswith(f"{tmp_path / 'space.yaml'}: ")
    assert "params.alpha: value 1.5 is not valid" in str(err.value)


def test_a_knob_goes_only_to_the_methods_that_read_it(tmp_path):
    """config.KNOBS + RECIPE_KNOBS decide; a `when` on a parameter a method never gets counts as a scope."""
    scoped = "  schedule: {type: categorical, choices: [cosine, exp], methods: [annealing]}\n"
    _, study = study_with(tmp_path, TAU_UP_TO_10 + scoped + "  decay: {type: float, low: 1, high: 4, when: {schedule: [exp]}}\n"
                          "  lr: {type: float, low: 0.001, high: 0.01}\n", train={"epochs": 30})
    assert set(validate(study).params) == {"tau_max", "schedule", "decay", "lr"}  # decay: annealing only, via when
    path, study = study_with(tmp_path, TAU_UP_TO_10 + "  decay: {type: float, low: 1, high: 4}\n", train={"epochs": 30})
    with pytest.raises(ConfigError, match=rf"^{tmp_path / 'space.yaml'}:3: params.decay: omits `methods`, so it goes to "
                                          r"every method, including kd, which never reads decay; it is read by "
                                          r"annealing, prokd, annealing\+layers, annealing\+minimax"):
        validate(study)
    _, study = study_with(tmp_path, "params:\n  kd_temperature: {type: float, low: 1, high: 8, methods: [kd, minimax]}\n",
                          trials={"kd": 1, "minimax": 1})
    validate(study)  # minimax reads kd_temperature (its divergence at T), per the table
