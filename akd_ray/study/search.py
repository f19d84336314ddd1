"""The searchers: one OptunaSearch per (teacher, student, method) with its own budget, the family's
two-objective variant, and the fixed points of the confirmation phase."""

from __future__ import annotations

import warnings

import optuna
from optuna.samplers import TPESampler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from akd_ray.capacity import COST
from akd_ray.config import RECIPE_KNOBS, Study
from akd_ray.preflight import budgets
from akd_ray.space import Space, define_by_run
from akd_ray.study.layout import METRIC, MODE, optuna_study_name
from akd_ray.study.resumable import Resumable

optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per Optuna study is noise here


class PairedSearch(Resumable):
    """One OptunaSearch per (teacher, student, method): each group gets exactly its trial budget.

    Suggestions go round-robin to the group with the fewest trials so far, so every pair advances
    together and an interrupted study has covered all pairs evenly.
    """

    objectives, directions = METRIC, MODE  # of each group's OptunaSearch (FamilySearch: two of each)

    def __init__(self, study: Study, space: Space, storage: str | None = None,
                 fixed: dict[tuple[str, str], dict] | None = None):
        """`storage`: an Optuna RDB URL for the groups' studies (optuna-dashboard reads it); None keeps
        them in memory. A fresh search replaces studies of the same names left by an earlier run.
        `fixed`: per (teacher, student), values every trial of that pair trains with (the shared recipe)."""
        super().__init__(metric=METRIC, mode=MODE)
        self.fixed = fixed or {}
        budget = budgets(study, space)
        rdb = optuna.storages.RDBStorage(storage) if storage else None
        self.groups: dict[tuple[str, str, str], OptunaSearch] = {}
        self.budget: dict[tuple[str, str, str], int] = {}
        self.started: dict[tuple[str, str, str], int] = {}
        self.owner: dict[str, tuple[str, str, str]] = {}
        for i, (teacher, student) in enumerate(study.pairs):
            for j, method in enumerate(study.search.methods):
                if not study.searches(teacher, method):  # a shared scratch: once per student
                    continue
                params = space.for_method(method)
                warm = [{k: v for k, v in p.items() if k in params} for p in study.search.warm_start]
                key = (teacher, student, method)
                name = optuna_study_name(*key)
                if rdb is not None and name in {s.study_name for s in optuna.get_all_study_summaries(rdb)}:
                    optuna.delete_study(study_name=name, storage=rdb)
                self.groups[key] = OptunaSearch(
                    space=define_by_run(space, method), metric=self.objectives, mode=self.directions,
                    sampler=TPESampler(seed=study.seed + 1000 * i + j, multivariate=True),
                    points_to_evaluate=[p for p in warm if p] or None,
                    **({"storage": rdb, "study_name": name} if rdb is not None else {}))
                if rdb is not None:  # optuna-dashboard then says what each objective is, not "Objective 0"
                    with warnings.catch_warnings():  # experimental since Optuna 3.2, stable in use
                        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                        self.groups[key]._ot_study.set_metric_names(objective_names(study))
                self.budget[key] = budget[method]
                self.started[key] = 0
        self.warm_from_pairs = study.search.warm_start_from_pairs
        self.params_of: dict[str, dict] = {}
        self.best: dict[tuple[str, str, str], tuple[float, dict]] = {}  # key -> (score, params)
        self.seeded: set[tuple[str, str, str]] = set()

    def suggest(self, trial_id: str) -> dict | str | None:
        open_groups = [k for k in self.groups if self.started[k] < self.budget[k]]
        if not open_groups:
            return Searcher.FINISHED
        key = min(open_groups, key=lambda k: self.started[k])
        self._seed_from_other_pairs(key)
        params = self.groups[key].suggest(trial_id)
        if params is None:
            return None
        self.started[key] += 1
        self.owner[trial_id] = key
        self.params_of[trial_id] = params
        teacher, student, method = key
        return {"teacher": teacher, "student": student, "method": method, "phase": "search",
                **self.fixed.get((teacher, student), {}), **params}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.owner:
            self.groups[self.owner[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self.owner:
            return
        key = self.owner[trial_id]
        finished = bool(result and result.get("final")) and not error
        # a trial stopped early reaches Optuna as pruned, with the values it reported per epoch: what
        # it really reached, never a final score it did not earn
        self.groups[key].on_trial_complete(trial_id, result if finished else None, error)
        if finished and (key not in self.best or result[METRIC] > self.best[key][0]):
            self.best[key] = (result[METRIC], self.params_of[trial_id])

    def _seed_from_other_pairs(self, key: tuple[str, str, str]) -> None:
        """Warm start: a pair's search tries the best point another pair found for the same method
        first (once), so temperatures carry across pairs instead of every pair starting cold."""
        if not self.warm_from_pairs or key in self.seeded:
            return
        # not a point this pair tried already: its own best may have come back as another pair's best
        tried = [params for trial_id, params in self.params_of.items() if self.owner[trial_id] == key]
        donors = [best for k, best in self.best.items()
                  if k[2] == key[2] and k[:2] != key[:2] and best[1] not in tried]
        if donors:
            point = max(donors, key=lambda b: b[0])[1]
            if point:
                # OptunaSearch keeps its optuna.Study private; enqueue_trial is how it seeds its
                # own points_to_evaluate too
                self.groups[key]._ot_study.enqueue_trial(point)
            self.seeded.add(key)


def objective_names(study: Study) -> list[str]:
    """What each Optuna objective is, as optuna-dashboard shows it: the validation metric (the best
    epoch's, a fraction), and a family's student cost."""
    from akd_ray.tasks.metrics import TASK_METRICS

    names = [f"validation {TASK_METRICS[study.task.name][0]} (best epoch, 0-1)"]
    if study.family is not None:
        names.append("student parameters" if study.family.cost == "parameters" else "student latency (ms)")
    return names


class FamilySearch(PairedSearch):
    """A study with a student family: one multi-objective OptunaSearch per (teacher, family, method) --
    a *size group* -- maximising the validation metric and minimising the student's cost (`COST`:
    parameters or measured latency) over the student fields and the method's knobs together.

    Budgets, round-robin and warm starts are PairedSearch's, per size group. Optuna cannot prune a
    multi-objective study, so per-epoch results are not passed on (Ray's OptunaSearch drops them) and
    a family study refuses early stopping (config.Study). A stopped or failed trial reaches Optuna
    without values (pruned / failed).
    """

    objectives, directions = [METRIC, COST], [MODE, "min"]


def searcher_for(study: Study, space: Space, storage: str | None = None,
                 fixed: dict[tuple[str, str], dict] | None = None) -> PairedSearch:
    return (FamilySearch if study.family is not None else PairedSearch)(study, space, storage, fixed)


# ---------------------------------------------------------------------------------------- the shared recipe
def shared_knobs(study: Study, space: Space) -> tuple[str, ...]:
    """The recipe knobs tuned once per pair on scratch's budget (`search.shared`; by default every
    RECIPE_KNOBS the space searches for scratch); none without scratch or with a student family."""
    if "scratch" not in study.search.methods or study.family is not None:
        return ()
    wanted = RECIPE_KNOBS if study.search.shared is None else study.search.shared
    return tuple(k for k in wanted if k in space.for_method("scratch"))


def recipe_phases(study: Study, space: Space) -> tuple[tuple[Study, Space], tuple[Study, Space]] | None:
    """The two searches of a shared recipe: scratch alone over the full space (the recipe), then every
    other method over its own knobs, with the shared ones left out of its space. None: no shared recipe."""
    shared = shared_knobs(study, space)
    if not shared:
        return None
    search = study.search
    first = study.model_copy(update={"search": search.model_copy(update={"trials": {"scratch": search.trials["scratch"]}})})
    rest = {m: n for m, n in search.trials.items() if m != "scratch"}
    second = study.model_copy(update={"search": search.model_copy(update={"trials": rest})})
    own = Space.model_construct(params={n: p if n not in shared else p.model_copy(update={"methods": ("scratch",)})
                                        for n, p in space.params.items()}, source=space.source)
    return (first, space), (second, own)


def recipe_of(rows: list[dict], shared: tuple[str, ...], study: Study | None = None) -> dict[tuple[str, str], dict]:
    """Per pair, the shared knobs' values of scratch's best finished search trial (by validation). Where
    scratch is searched once per student (`study.shared_scratch`), every pair of that student takes its recipe."""
    best: dict[tuple[str, str], dict] = {}
    for r in rows:
        if r["method"] == "scratch" and r["phase"] == "search" and r.get("finished"):
            key = (r["teacher"], r["student"])
            if key not in best or r[METRIC] > best[key][METRIC]:
                best[key] = r
    holder = study.shared_scratch if study is not None else None
    if holder is not None:
        best.update({(t, s): best[(holder, s)] for t, s in study.pairs if (t, s) not in best and (holder, s) in best})
    return {k: {n: r["params"][n] for n in shared if n in r["params"]} for k, r in best.items()}


class Points(Resumable):
    """Fixed configurations in order (the confirmation re-runs), resumable like any searcher."""

    def __init__(self, points: list[dict]):
        super().__init__(metric=METRIC, mode=MODE)
        self.points, self.next = points, 0

    def suggest(self, trial_id: str) -> dict | str:
        if self.next >= len(self.points):
            return Searcher.FINISHED
        self.next += 1
        return self.points[self.next - 1]

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass
