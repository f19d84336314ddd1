"""PairedSearch without Ray running: budgets per pair and method, warm start, resumability."""

from __future__ import annotations

import pickle

from ray.tune.search import Searcher

from akd_ray.config import load_study
from akd_ray.study import validate
from akd_ray.study.search import PairedSearch

QUICKSTART = "studies/quickstart.yaml"


def suggest_all(search: PairedSearch, n: int) -> list[dict]:
    return [search.suggest(f"t{i}") for i in range(n)]


def test_every_pair_and_method_gets_exactly_its_budget_then_finished():
    study = load_study(QUICKSTART)
    search = PairedSearch(study, validate(study))
    total = sum(study.search.trials.values()) * len(study.pairs)
    configs = suggest_all(search, total)
    for teacher, student in study.pairs:
        for method, n in study.search.trials.items():
            mine = [c for c in configs if (c["teacher"], c["student"], c["method"]) == (teacher, student, method)]
            assert len(mine) == n
    assert search.suggest("one-more") == Searcher.FINISHED
    # round-robin: the first suggestions cover every group before any group gets a second trial
    groups = len(study.pairs) * len(study.search.trials)
    firsts = {(c["student"], c["method"]) for c in configs[:groups]}
    assert len(firsts) == groups


def mlp4_after_mlp16_finished(overrides: list[str]) -> tuple[dict, dict]:
    """(mlp-16's finished annealing point, mlp-4's next annealing suggestion)."""
    study = load_study(QUICKSTART, overrides)
    search = PairedSearch(study, validate(study))
    configs = dict(zip([f"t{i}" for i in range(6)], suggest_all(search, 6)))
    donor = next(t for t, c in configs.items() if (c["student"], c["method"]) == ("mlp-16", "annealing"))
    search.on_trial_complete(donor, {"val_best": 0.9, "final": 1})
    later = [search.suggest(f"u{i}") for i in range(6)]
    return configs[donor], next(c for c in later if (c["student"], c["method"]) == ("mlp-4", "annealing"))


def test_a_pair_is_warm_started_with_another_pairs_best_point():
    donor, seeded = mlp4_after_mlp16_finished([])
    keys = ("tau_max", "schedule", "stage1_fraction", "lr")
    assert {k: seeded[k] for k in keys} == {k: donor[k] for k in keys}


def test_no_warm_start_when_switched_off():
    donor, other = mlp4_after_mlp16_finished(["search.warm_start_from_pairs=false"])
    assert other["lr"] != donor["lr"]


def test_search_state_survives_a_save_and_restore(tmp_path):
    study = load_study(QUICKSTART)
    search = PairedSearch(study, validate(study))
    suggest_all(search, 5)
    search.save(str(tmp_path / "search.pkl"))
    restored = PairedSearch(study, validate(study))
    restored.restore(str(tmp_path / "search.pkl"))
    assert restored.started == search.started and restored.owner == search.owner
    total = sum(study.search.trials.values()) * len(study.pairs)
    rest = suggest_all(restored, total - 5)  # the remaining budget, not a fresh one
    assert all(isinstance(c, dict) for c in rest) and restored.suggest("x") == Searcher.FINISHED
    pickle.dumps(restored.__dict__)


def test_a_warm_start_never_hands_a_pair_a_point_it_already_tried():
    study = load_study(QUICKSTART)
    search = PairedSearch(study, validate(study))
    configs = dict(zip([f"t{i}" for i in range(6)], suggest_all(search, 6)))
    mine = next(t for t, c in configs.items() if (c["student"], c["method"]) == ("mlp-16", "annealing"))
    other = next(t for t, c in configs.items() if (c["student"], c["method"]) == ("mlp-4", "annealing"))
    # mlp-4 was seeded with mlp-16's point in an earlier suggestion, so that point is now mlp-4's own
    search.params_of[other] = dict(search.params_of[mine])
    search.on_trial_complete(other, {"val_best": 0.95, "final": 1})
    search.on_trial_complete(mine, {"val_best": 0.5, "final": 1})
    later = [search.suggest(f"u{i}") for i in range(6)]
    again = next(c for c in later if (c["student"], c["method"]) == ("mlp-16", "annealing"))
    assert {k: again[k] for k in search.params_of[mine]} != search.params_of[mine]


def test_a_trial_stopped_early_is_pruned_in_optuna_and_never_a_donor():
    import optuna

    study = load_study(QUICKSTART)
    search = PairedSearch(study, validate(study))
    configs = dict(zip([f"t{i}" for i in range(6)], suggest_all(search, 6)))
    stopped = next(t for t, c in configs.items() if (c["student"], c["method"]) == ("mlp-16", "annealing"))
    for epoch, value in enumerate([0.5, 0.6]):  # what it reached before the scheduler stopped it
        search.on_trial_result(stopped, {"val_best": value, "training_iteration": epoch + 1})
    search.on_trial_complete(stopped, {"val_best": 0.6, "training_iteration": 2})  # no `final`: stopped
    ot = search.groups[("mlp-256x2", "mlp-16", "annealing")]._ot_study
    (trial,) = [t for t in ot.trials if t.state != optuna.trial.TrialState.RUNNING]
    assert trial.state == optuna.trial.TrialState.PRUNED and trial.value == 0.6  # its last epoch, as pruned
    assert trial.intermediate_values == {1: 0.5, 2: 0.6}
    assert ("mlp-256x2", "mlp-16", "annealing") not in search.best  # warm starts take finished trials only


def test_a_method_with_nothing_to_search_runs_once(tmp_path):
    import yaml

    from akd_ray.study import budgets

    (tmp_path / "space.yaml").write_text(yaml.safe_dump({"params": {
        "tau_max": {"type": "int", "low": 2, "high": 4, "methods": ["annealing"]}}}))
    data = yaml.safe_load(open(QUICKSTART))
    data["search"] = {"space": str(tmp_path / "space.yaml"), "trials": {"scratch": 3, "kd": 2, "annealing": 4}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
    study = load_study(tmp_path / "s.yaml")
    assert budgets(study, validate(study)) == {"scratch": 1, "kd": 1, "annealing": 4}
    search = PairedSearch(study, validate(study))
    configs = suggest_all(search, 2 * (1 + 1 + 4))
    assert all(isinstance(c, dict) for c in configs) and search.suggest("x") == Searcher.FINISHED

    from typer.testing import CliRunner

    from akd_ray.cli import app

    out = CliRunner().invoke(app, ["validate", str(tmp_path / "s.yaml")])
    assert out.exit_code == 0, out.output
    assert "scratch: the search space has no parameter for it, so it runs once per pair (trials: 3 -> 1)" in out.output


def test_validate_says_when_the_searched_methods_get_unequal_budgets(tmp_path):
    from pathlib import Path

    import yaml
    from typer.testing import CliRunner

    from akd_ray.cli import app

    data = yaml.safe_load(open(QUICKSTART))
    for trials, expected in (({"scratch": 2, "kd": 2, "annealing": 4}, True), (3, False)):
        data["search"]["trials"] = trials
        data["search"]["space"] = str((Path(QUICKSTART).parent / data["search"]["space"]).resolve())
        (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
        out = CliRunner().invoke(app, ["validate", str(tmp_path / "s.yaml")])
        assert out.exit_code == 0, out.output
        assert ("unequal budgets:" in out.output and "annealing 4" in out.output) is expected, out.output


def test_the_searches_live_in_an_optuna_storage_that_optuna_s_own_tools_open(tmp_path):
    import optuna

    from akd_ray.study.layout import optuna_study_name

    study = load_study(QUICKSTART)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    search = PairedSearch(study, validate(study), storage=url)
    total = sum(study.search.trials.values()) * len(study.pairs)
    configs = dict(zip([f"t{i}" for i in range(total)], suggest_all(search, total)))
    for i, (trial_id, config) in enumerate(configs.items()):
        search.on_trial_complete(trial_id, {"val_best": 0.5 + i / 100, "final": 1})
    search.save(str(tmp_path / "searcher.pkl"))  # Tune's save/restore goes through the same storage
    restored = PairedSearch.__new__(PairedSearch)
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert restored.best == search.best
    for teacher, student in study.pairs:
        for method, n in study.search.trials.items():
            ot = optuna.load_study(study_name=optuna_study_name(teacher, student, method), storage=url)
            values = sorted(t.value for t in ot.trials if t.state == optuna.trial.TrialState.COMPLETE)
            expected = sorted(0.5 + i / 100 for i, c in enumerate(configs.values())
                              if (c["teacher"], c["student"], c["method"]) == (teacher, student, method))
            assert values == expected and len(values) == n
            assert ot.metric_names == ["validation accuracy (best epoch, 0-1)"]  # optuna-dashboard's label
    # a fresh search of the same study starts from empty studies, not from the last run's trials
    PairedSearch(study, validate(study), storage=url)
    teacher, student = study.pairs[0]
    assert optuna.load_study(study_name=optuna_study_name(teacher, student, "kd"), storage=url).trials == []
