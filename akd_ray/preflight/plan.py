"""The plan: what a study will run, where, and what it downloads -- and `check`, every preflight check in
the order a user would fix them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from akd_ray.config import Study
from akd_ray.preflight.data import check_data
from akd_ray.preflight.errors import PreflightError
from akd_ray.preflight.machine import check_fits, concurrency, local_capacity
from akd_ray.preflight.models import check_models
from akd_ray.preflight.search import budgets, check_batch_split, check_levers, check_space
from akd_ray.preflight.storage import check_storage, check_tracking
from akd_ray.space import Space


@dataclass(frozen=True)
class Plan:
    """What a study will run, where, and what it will download: `validate` prints it, `tune` follows it."""
    study: Study
    space: Space
    budgets: dict[str, int]  # trials per pair for each method (see `budgets`)
    search_trials: int  # pairs x methods x budgets
    confirm_runs: int  # at most: every pair's best config of every method, once per confirmation seed
    tracking_uri: str
    downloads: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # what works but deserves a look (skipped data rows, ...)
    capacity: tuple[float, float] | None = None  # (CPUs, GPUs) of this machine or the cluster
    capacity_of: str = "this machine"
    warnings: tuple[str, ...] = ()  # valid, but this machine cannot run it (`check(machine="warn")`)

    @property
    def concurrency(self) -> int | None:
        return None if self.capacity is None else concurrency(self.study, *self.capacity)

    def _racing(self) -> str:
        """Racing's worst case: every pair undecided, every method tied, up to confirm_seeds_max."""
        s = self.study.search
        if not s.confirm_seeds_max > s.confirm_seeds >= 3:
            return ""
        more = len(self.study.pairs) * len(s.methods) * (s.confirm_seeds_max - s.confirm_seeds)
        return (f"; racing: an undecided pair's tied methods get more seeds, up to {s.confirm_seeds_max} "
                f"(at most {more} more runs)")

    def lines(self) -> list[str]:
        s, r = self.study, self.study.resources
        budgets = " + ".join(f"{m} {self.budgets[m]}" for m in s.search.methods)
        epochs = (f"{self.space.params['epochs'].low:g}..{self.space.params['epochs'].high:g} epochs (searched)"
                  if "epochs" in self.space.params else f"{s.train.epochs} epochs")
        teachers = ", ".join(f"{n}: {'train ' + str(t.train.epochs) + ' epochs' if t.prepare == 'train' else 'load'}"
                             for n, t in s.teachers.items())
        per_trial = (f"{r.workers} x ({r.cpus_per_worker:g} CPU" + (f", {r.gpus_per_worker:g} GPU" if r.gpus_per_worker
                                                                    else "") + ") per trial")
        if self.capacity is not None:
            cpus, gpus = self.capacity
            per_trial += (f"; {self.capacity_of}: {cpus:g} CPU" + (f", {gpus:g} GPU" if gpus else "")
                          + f" -> {self.concurrency} trial(s) at a time")
        out = [
            f"task       {s.task.name}" + (f" from {s.task.data_dir}" if s.task.data_dir else ""),
            f"teachers   {teachers}",
            f"search     {len(s.pairs)} pair(s) x ({budgets}) = {self.search_trials} trials, {epochs}, "
            f"{len(self.space.params)} searched parameter(s) from {s.search.space}",
            f"confirm    up to {self.confirm_runs} runs: {s.search.confirm_seeds} seed(s) x "
            f"{len(s.search.methods)} method(s) x {len(s.pairs)} pair(s)" + self._racing(),
            f"resources  {per_trial}",
            f"storage    {Path(s.storage) / s.name}",
            f"MLflow     {self.tracking_uri}",
            f"downloads  {'; '.join(self.downloads) or 'none'}",
        ]
        once = [m for m in s.search.methods if self.budgets[m] != s.search.trials[m]]
        notes = [f"{m}: the search space has no parameter for it, so it runs once per pair "
                 f"(trials: {s.search.trials[m]} -> 1)" for m in once]
        unequal = s.unequal_budgets([m for m in s.search.methods if self.space.for_method(m)])
        notes += [unequal] if unequal else []
        return out + [f"note       {n}" for n in (*notes, *self.notes)]


def check(study: Study, address: str | None = None, machine: str = "refuse") -> Plan:
    """Every check that needs no training, in the order a user would fix them; the plan if all pass.

    `machine`: what to do when no cluster is given and one trial does not fit this machine: "refuse"
    (`tune`: it would run here) or "warn" (`validate`: the study is valid, this machine just cannot run
    it; the plan's `warnings` say what is missing and how to run it on a cluster).
    """
    space = check_space(study)
    check_levers(study)
    downloads: list[str] = []
    notes: list[str] = []
    warnings: list[str] = []
    check_batch_split(study)
    check_storage(study)
    uri = check_tracking(study)
    check_models(study, downloads)
    check_data(study, downloads, notes)
    capacity = None
    if not (address or os.environ.get("RAY_ADDRESS")):  # a local Ray: this machine is the cluster
        capacity = local_capacity()
        try:
            check_fits(study, *capacity, "this machine")
        except PreflightError as e:
            if machine != "warn":
                raise
            warnings.append(f"{e}. The study is valid; run it where it fits: on a Ray cluster, "
                            f"`akd-ray tune {study.source} --address ray://<head>:10001` (or start one with "
                            "`ray up cluster.yaml` and submit `akd-ray tune` to it with `ray job submit`)")
    budget = budgets(study, space)
    groups = [(t, m) for t, _ in study.pairs for m in study.search.methods if study.searches(t, m)]  # shared scratch
    confirm = len(groups) * study.search.confirm_seeds
    return Plan(study, space, budget, sum(budget[m] for _, m in groups), confirm, uri, tuple(downloads), tuple(notes),
                capacity, warnings=tuple(warnings))
