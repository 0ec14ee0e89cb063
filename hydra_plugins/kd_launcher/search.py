"""Optuna's Hydra sweeper, continuing its study where a rerun finds one (conf/hparams_search/, docs/search.md).

The stock sweeper loads a study that exists (load_if_exists) but then asks n_trials more, and the trials that a
Ctrl-C or a preemption cut short stay RUNNING for ever. This one counts n_trials over the whole study: a rerun of the
same command asks only the trials still to go, and first asks again for each cut-short trial's values (failing the
old trial): its cell dir is named by those values, so kd resumes it from its last finished epoch (checkpoint.pt).
"""
from __future__ import annotations

import logging
from typing import Any, Optional

log = logging.getLogger(__name__)

try:
    import optuna
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # without the [search] extra there is no search to offer; Hydra's plugin scan must not warn
    OptunaSweeper = None


def trials_to_go(storage: Optional[str], study_name: Optional[str], n_trials: int) -> int:
    """How many of a study's `n_trials` are still to run, re-queueing the values of its cut-short trials."""
    if storage is None or study_name is None:
        return n_trials  # an in-memory study starts afresh on every run
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:  # no such study yet
        return n_trials
    trials = study.get_trials(deepcopy=False)
    cut_short = [t for t in trials if t.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)]
    for trial in cut_short:
        if trial.state == optuna.trial.TrialState.RUNNING:
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            study.enqueue_trial(trial.params)
    done = len(trials) - len(cut_short)
    log.info("study %s: %d of its n_trials=%d finished, %d cut short (asked again first); %d to go", study_name,
             done, n_trials, len(cut_short), max(0, n_trials - done))
    return max(0, n_trials - done)


if OptunaSweeper is not None:
    class KdOptunaSweeper(OptunaSweeper):
        """hydra.sweeper.n_trials counts the study's trials in all, across reruns into its sweep dir."""

        def sweep(self, arguments: list[str]) -> Any:
            impl = self.sweeper
            impl.n_trials = trials_to_go(impl.storage, impl.study_name, impl.n_trials)
            return super().sweep(arguments)
