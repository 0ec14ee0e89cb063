"""Bad input that the schemas cannot see, caught before any work: for one job, and for every cell of a sweep
before the first of them trains (a bad value in the last cell must not wait for the others to finish)."""
from __future__ import annotations

from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from kd.data.augment_ladder import picks_with_teacher
from kd.config import AugmentScope, Pipeline, TeacherView, check_known_keys
from kd.training.device import check_device
from kd.training.second_views import check_second_view
from kd.training.dot import check_dot
from kd.training.distributed import check_data_parallel
from kd.distillers.base import Distiller, check_alpha
from kd.runs.search import check_search, is_search
from kd.runs.targets import ConfigTargetError, check_targets
from kd.training.teacher import check_given_checkpoint


def check_trainer(t: DictConfig) -> None:
    """What the schema can only type-check: a 0 would fail late (checkpoint_every=0 after a whole epoch)."""
    for key in ("epochs", "batch_size", "eval_batch_size", "checkpoint_every"):
        if t[key] < 1:
            raise ValueError(f"trainer.{key}={t[key]} must be >= 1")
    if t.teacher_view != TeacherView.same and t.pipeline != Pipeline.device:
        raise ValueError(f"trainer.teacher_view={TeacherView(t.teacher_view).value} draws the teacher's view per image "
                         f"on the device, which trainer.pipeline=dataloader does not; use trainer.pipeline=device "
                         f"or trainer.teacher_view=same")
    if t.augment_scope == AugmentScope.epoch and t.pipeline != Pipeline.device:
        raise ValueError("trainer.augment_scope=epoch augments the whole split on the device once per epoch, which "
                         "trainer.pipeline=dataloader (per image in its workers) does not; use trainer.pipeline=device "
                         "or trainer.augment_scope=batch")
    if t.graph_capture and not t.compile:
        raise ValueError("trainer.graph_capture=true captures torch.compile's graphs, but trainer.compile=false: "
                         "set trainer.compile=true, or drop trainer.graph_capture")
    check_data_parallel(t)


def check_cell(cfg: DictConfig, here: bool = True) -> None:
    """Bad input that the schemas cannot see, caught before any work; `here=False` where the job will run on
    another machine (the device is then checked by name only)."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:  # e.g. data=folder without data.root
        hint = (" (data.root: the folder holding train/<class>/<image> and test/<class>/<image>)"
                if "data.root" in missing else "")
        raise ValueError(f"{', '.join(missing)} must be set: add {missing[0]}=... to the command{hint}.")
    check_known_keys(cfg)
    check_alpha(cfg.alpha)
    check_trainer(cfg.trainer)
    check_dot(cfg.optim, cfg.trainer)
    if picks_with_teacher(cfg.aug._target_) and cfg.trainer.pipeline != Pipeline.device:
        raise ValueError("aug=fccutmixpick picks each batch with the teacher inside the data stream, which only "
                         "trainer.pipeline=device has; use trainer.pipeline=device")
    check_device(cfg.trainer.device, here)  # `here=False`: where a sweep is submitted, not where it runs
    check_targets(cfg)
    check_second_view(cfg, check_distiller(cfg.loss))
    check_given_checkpoint(cfg)


def check_data(data_cfg: DictConfig) -> None:
    """Decode an image folder once, before any cell: an image Pillow cannot read is named here, once, instead of
    by every cell in turn; the cells then read the decoded cache. Other datasets are checked by their cells."""
    if data_cfg._target_.rsplit(".", 1)[-1] == "folder":
        built(data_cfg)


def built(node: DictConfig) -> Any:
    """`instantiate(node)`, raising what the target said rather than Hydra's wrapper around it."""
    try:
        return instantiate(node)
    except InstantiationException as err:
        raise err.__cause__ or err from None


def check_distiller(loss_cfg: DictConfig) -> Distiller:
    """Build the loss once before any work: its own checks run (loss.temperature=0, a negative beta), and a
    loss written for kd's former function API is named instead of failing in the first step."""
    loss = built(loss_cfg)  # the distiller's own checks run
    if not isinstance(loss, Distiller):
        raise ConfigTargetError(
            f"loss._target_={loss_cfg._target_} builds a {type(loss).__name__}, not a kd.distillers.base.Distiller: a "
            f"loss is a Distiller subclass that writes `term` (docs/extending.md); drop `_partial_` from its YAML "
            f"and wrap the function in a class.")
    return loss


def sweep_errors(config: DictConfig) -> tuple[list[str], list[DictConfig]]:
    """`overrides: error` for each cell of a multirun that check_cell refuses, each composed as its job will be;
    and the distinct data configs of the others (for check_data, once each).

    A search's trials are not known before it runs (its sweeper picks each from the trials before): its fixed
    settings are checked here, with each searched key at its default; each trial is checked as it is launched
    (kd/runs/job.py: train_pack), failing alone."""
    from hydra import compose
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    if is_search(config.hydra):
        fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
        try:
            cfg = compose(config_name=config.hydra.job.config_name, overrides=fixed)
            check_cell(cfg, here=False)
            check_search(cfg)
        except Exception as err:  # every kind of bad input, named as the search's own
            return [f"the search's fixed settings ({' '.join(fixed) or 'the defaults'}): {type(err).__name__}: {err}"
                    ], []
        return [], [cfg.data]
    (cells,) = BasicSweeper.split_arguments(parsed, None)  # Hydra's own expansion of the grid
    errors, datasets = [], {}
    for overrides in cells:
        try:
            cfg = compose(config_name=config.hydra.job.config_name, overrides=list(overrides))
            check_cell(cfg, here=False)
        except Exception as err:  # every kind of bad input, each named by the overrides that make its cell
            swept = [o for o in overrides if not all(o in other for other in cells)] or overrides
            errors.append(f"{' '.join(swept)}: {type(err).__name__}: {err}")
            continue
        datasets.setdefault(OmegaConf.to_yaml(cfg.data), cfg.data)
    return errors, list(datasets.values())


class CheckEveryCell(Callback):
    """Refuse a multirun with a bad cell before anything is written or trained (before the sweeper saves
    multirun.yaml, which a corrected rerun into the same sweep dir would otherwise have to extend), and a single
    run with bad settings before Hydra creates its run dir. Hydra turns a callback's exceptions into warnings,
    so this stops the run with SystemExit."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        HydraConfig.instance().set_config(config)  # as Hydra does next: out_dir is ${kd.job_dir:}
        cfg = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
        try:
            check_cell(cfg)
            check_data(cfg.data)
        except Exception as err:  # every kind of bad input check_cell raises
            raise SystemExit(f"Error: {type(err).__name__}: {err} Nothing was written.") from None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            errors, datasets = sweep_errors(config)
        except Exception as err:  # e.g. `interval(0,1)` under the grid's sweeper: never a warning that skips the checks
            raise SystemExit(f"Error: kd cannot expand this multirun's cells to check them ({type(err).__name__}: "
                             f"{err}); nothing was written or trained. interval(...) and tag(...) sweeps need a "
                             f"search's sweeper: hparams_search=<name> (docs/search.md).") from None
        if errors:
            what = "this search has" if is_search(config.hydra) else f"{len(errors)} cell(s) of this multirun have"
            raise SystemExit(f"Error: {what} bad settings; nothing was written or trained:\n"
                             + "".join(f"  {e}\n" for e in errors) + "Fix those values and rerun.")
        for data_cfg in datasets:  # once per dataset, however many cells read it
            try:
                check_data(data_cfg)
            except Exception as err:
                raise SystemExit(f"Error: {type(err).__name__}: {err} Nothing was written or trained.") from None
