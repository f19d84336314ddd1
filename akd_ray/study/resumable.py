"""Save and restore for Tune searchers and schedulers whose whole state pickles."""

from __future__ import annotations

import pickle

from ray.tune.search import Searcher


class PickledState:
    """save/restore for a Tune searcher or scheduler whose whole state pickles: Tune saves it with the
    experiment and `Tuner.restore` reloads it."""

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


class Resumable(PickledState, Searcher):
    """A searcher whose whole state pickles: Tune saves it with the experiment, `Tuner.restore` reloads it."""
