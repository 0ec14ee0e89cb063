"""The training loop for a pack of cells: `fit` runs `train_one_epoch` and `evaluate`, checkpointing as it goes.

A pack is the cells of a grid that differ only in the loss's settings (alpha, temperature, ...) and in
what their teacher sees (kd/training/teacher_views.py). They share one data stream, one augmented batch per step
and one teacher forward per kind of view; each cell has its own student (kd/training/students.py), optimizer,
checkpoint and metrics. A single run is a pack of one: there is no other loop.

Why a pack is exact: a cell's data stream (shuffle order, every augmentation draw) comes from a
generator seeded by `seed` alone, the teacher's independent view from its own, and its student's
initial weights from the global RNG re-seeded right before it is built, so none depends on alpha, the
loss, or which other cells share the pack.

Metrics accumulate on the device and are read once per epoch (plus a periodic non-finite check),
so the GPU is never stalled by a per-step host sync.

Data-parallel (`world`, kd/training/distributed.py), the same loop runs on every rank: each trains every student
on its share of each global batch with the ranks' mean gradient, sums its metrics and evaluation counts with
the others', and rank 0 alone writes the checkpoints. One process is world size 1.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import time
from typing import Callable, Optional, Union

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from kd.data.augment import NoAugment
from kd.data.augment_ladder import teacher_entropy
from kd.training.capture import EAGER, CompilePlan, log_plan, plan_compile
from kd.checkpoint import set_rng_state
from kd.config import AugmentScope, Pipeline, Stage, TeacherView
from kd.data.datasets import ImageSplits
from kd.training.diagnostics import TEST_KEYS, fidelity_sums
from kd.training.distributed import SINGLE, World
from kd.distillers.base import Outputs
from kd.data.image_files import ImageFiles
from kd.data.order import rank_share
from kd.data.pipeline import DataLoaderPipeline, DevicePipeline, Normalize
from kd.data.stream import StreamPipeline, check_streamable
from kd.training.progress import PackProgress
from kd.training.teacher import CachedTeacherLogits, FrozenTeacher
from kd.training.stacking import StudentPlaces
from kd.training.students import (Cell, Student, _prefix, make_pack, pack_first_stage, pack_teacher_batch_stats,
                                 save_checkpoint)
from kd.training.second_views import SecondViews
from kd.training.teacher_views import TeacherViews, Teaching

log = logging.getLogger(__name__)

NONFINITE_CHECK_EVERY = 50  # steps between host reads of the "loss went NaN/inf" flags
TeacherFn = Callable[[torch.Tensor, torch.Tensor], Outputs]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf: stop instead of training on garbage."""


def autocast_for(device: torch.device, bf16: bool) -> Callable:
    """bf16 autocast on CUDA when asked; a no-op context elsewhere, so CPU runs the same code."""
    if bf16 and device.type == "cuda":  # as kd.training.device.speed_switches records it
        return functools.partial(torch.autocast, device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def train_one_epoch(update, batches, teaching: Optional[Teaching], autocast: Callable, epoch: int,
                    skip: set[int], plan: CompilePlan = EAGER, first_stage_epochs: int = 0,
                    world: World = SINGLE) -> list[Union[dict, NonFiniteLossError, None]]:
    """One pass over the data for every student of the pack not in `skip`: each its stats, or the error
    that stopped it (None for those skipped: they wait for the pack to reach their epoch). `teaching`
    (None: no live cell distils) runs the teacher on each view the live distilling students ask for.

    `epoch` counts the pack's first stage's epochs (`first_stage_epochs`, kd/distillers/base.py) too: before
    them, each student trains only its distiller's first-stage modules (in train mode, the rest in eval mode)
    on its first-stage loss; the distiller's own `epoch` counts the main epochs from 0."""
    first_stage = epoch < first_stage_epochs
    n_students = len(update.students)
    device = next(update.students[0].model.parameters()).device
    sums = torch.zeros(n_students, 4, device=device)  # per student: loss, ce, kd, correct (summed over images)
    extra_sums: list[dict[str, torch.Tensor]] = [{} for _ in range(n_students)]  # a distiller's own parts
    first_bad = torch.full((n_students,), -1, device=device)  # the step each student's loss first went non-finite
    errors: dict[int, NonFiniteLossError] = {}
    live = [i for i in range(n_students) if i not in skip]
    for i, s in enumerate(update.students):
        s.model.train(not first_stage)
        s.distiller.train(not first_stage)
        if first_stage and i in live:
            for module in s.distiller.first_stage_modules(s.model):
                module.train()
    seen = 0
    places = StudentPlaces(n_students, device)
    if teaching is not None:
        teaching.begin_epoch(epoch)
    for step, (images, labels, indices) in enumerate(batches):
        plan.begin_step()
        distilling = [i for i in live if update.students[i].alpha > 0] if teaching is not None else []
        views = {update.students[i].view for i in distilling}
        on_view = teaching.step(views, images, labels, indices) if distilling else {}
        teachers = {i: on_view[update.students[i].view] for i in distilling}
        second = {i: (update.students[i].distiller.second_view, update.students[i].view) for i in distilling
                  if update.students[i].distiller.second_view is not None}
        if second:  # a distiller's second view of the batch (kd/training/second_views.py): both networks see it
            second = teaching.second(second, indices, on_view)
            teachers.update((i, teachers[i]._replace(second=out)) for i, (_, out) in second.items())
        n = labels.shape[0]
        hard = labels if labels.ndim == 1 else labels.argmax(1)  # soft targets (Mixup, CutMix): the larger share
        out = update.step(live, images, labels, teachers, autocast, epoch - first_stage_epochs, indices,
                          first_stage=first_stage, second={i: view for i, (view, _) in second.items()})
        # Every live student's metrics at once: a pack's step adds the ops of one student's, not K of them.
        losses = out.losses
        correct = (out.logits.argmax(-1) == hard).sum(-1)
        total = losses.total.detach()
        places.add(sums, out.live, torch.stack([total * n, losses.ce.detach() * n, losses.kd.detach() * n,
                                                correct], 1))
        for i, extra in zip(out.live, losses.extra):
            for name, value in extra.items():
                extra_sums[i][name] = extra_sums[i].get(name, 0.0) + value.detach().float() * n
        bad = ~torch.isfinite(total)
        was = places.take(first_bad, out.live)
        places.put(first_bad, out.live, torch.where(bad & (was < 0), step, was))
        seen += n
        if (step + 1) % NONFINITE_CHECK_EVERY == 0:
            live = _drop_nonfinite(live, world.max(first_bad), errors, epoch)
    _drop_nonfinite(live, world.max(first_bad), errors, epoch)
    stats: list[Union[dict, NonFiniteLossError, None]] = []
    counted = world.sum(torch.cat([sums.flatten(), sums.new_tensor([seen])]))  # every rank's images
    seen = int(counted[-1])
    means = (counted[:-1].view_as(sums) / seen).tolist()
    for extra in extra_sums:
        for name, value in extra.items():
            world.sum(value)
    for i in range(n_students):
        if i in skip or i in errors:
            stats.append(errors.get(i))
            continue
        loss, ce, kd, correct = means[i]
        extra = {f"train/{name}": float(value) / seen for name, value in extra_sums[i].items()}
        stats.append({"train/loss": loss, "train/ce": ce, "train/kd": kd, **extra, "train/top1": 100.0 * correct,
                      "images": seen})
    return stats


def _drop_nonfinite(live: list[int], first_bad: torch.Tensor, errors: dict, epoch: int) -> list[int]:
    """The students still finite; the others get their error (the rest of the pack trains on)."""
    still = []
    steps = first_bad.tolist()  # one read from the device for the whole pack
    for i in live:
        step = int(steps[i])
        if step < 0:
            still.append(i)
            continue
        # Counted from 1, as the epoch log lines count. Resuming would restore the old lr from checkpoint.pt.
        errors[i] = NonFiniteLossError(
            f"loss is NaN/inf at epoch {epoch + 1} step {step + 1}; training stopped (the last good checkpoint, "
            f"if any, is kept). Lower optim.optimizer.lr or check the data, and start in a new output dir."
        )
    return still


@torch.no_grad()
def evaluate(model: nn.Module, batches, autocast: Callable, split: str = "test",
             teacher: Optional[CachedTeacherLogits] = None, world: World = SINGLE) -> dict[str, float]:
    """Top-1 and top-5 accuracy (%) and the mean cross-entropy on `split` ("test" or "val"), read from the
    device once; with the teacher's logits on the split, the student's fidelity to it (kd/training/diagnostics.py).
    Data-parallel, each rank counts its shard of the split and the counts are summed."""
    model.eval()
    device = next(model.parameters()).device
    counts = torch.zeros(6, device=device)  # top1, top5, images, summed CE, agreements, summed KL
    for images, labels, indices in batches:
        with autocast():
            logits = model(images)
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top5 == labels[:, None]
        ce = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
        fidelity = (fidelity_sums(logits, teacher(images, indices).logits) if teacher is not None
                    else torch.zeros(2, device=device))
        counts += torch.cat([torch.stack([hits[:, 0].sum(), hits.any(1).sum(),
                                          labels.new_full((), labels.shape[0]), ce]), fidelity])  # a fill, no copy
    top1, top5, n, ce, agree, kl = world.sum(counts).tolist()
    row = {f"{split}/top1": 100.0 * top1 / n, f"{split}/top5": 100.0 * top5 / n, f"{split}/loss": ce / n}
    if teacher is not None:
        row.update(zip(TEST_KEYS, (100.0 * agree / n, kl / n)))
    return row


def make_batches(cfg: DictConfig, splits: ImageSplits, split: str, aug, device: torch.device,
                 shuffle: bool, world: World = SINGLE):
    """Batches of the "train", "val" or "test" split from the configured pipeline, or streamed from its files:
    `world`'s rank's shards."""
    t = cfg.trainer
    images, labels = splits.split(split)
    batch_size = t.batch_size if shuffle else t.eval_batch_size
    channels_last = t.channels_last  # faster on CPUs too (oneDNN convolutions), not only with cuDNN
    if isinstance(images, ImageFiles):
        check_streamable(t, aug, splits.name)
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
        return StreamPipeline(images, labels, aug, Normalize(splits.mean, splits.std, device, channels_last),
                              batch_size, generator, shuffle, splits.num_classes, t.num_workers, world.rank, world.size)
    if t.pipeline == Pipeline.device:
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
        per_epoch = shuffle and t.augment_scope == AugmentScope.epoch  # evaluation is never augmented
        return DevicePipeline(images, labels, aug, Normalize(splits.mean, splits.std, device, channels_last),
                              batch_size, generator, shuffle, splits.num_classes, cfg.seed if per_epoch else None,
                              cfg.seed, world.rank, world.size)
    return DataLoaderPipeline(images, labels, aug, splits.mean, splits.std, batch_size, device,
                              t.num_workers if shuffle else 0, cfg.seed, shuffle, channels_last, splits.num_classes)


def test_top1(model: nn.Module, cfg: DictConfig, splits: ImageSplits, device: torch.device,
              world: World = SINGLE) -> float:
    """A model's test top-1 (%), as `fit` measures it: how a teacher is checked before it teaches."""
    batches = make_batches(cfg, splits, "test", aug=NoAugment(), device=device, shuffle=False, world=world)
    memory_format = torch.channels_last if cfg.trainer.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    return evaluate(model, batches, autocast_for(device, cfg.trainer.bf16), world=world)["test/top1"]


def make_teaching(cfg: DictConfig, teacher: Optional[nn.Module], splits: ImageSplits, aug, batches,
                  views: set[TeacherView], device: torch.device, autocast: Callable, plan: CompilePlan = EAGER,
                  features: bool = False, batch_stats: bool = False) -> Optional[Teaching]:
    """None when no cell needs the teacher (it never runs). Else the teacher for each view the pack's distilling
    cells ask for: its logits computed once where they cannot change between epochs (the clean view, or any
    view of aug=none) and no distiller reads its features; else the live teacher, with features only for a
    distiller that reads them. With `batch_stats` its BatchNorms use each batch's statistics, so its logits depend on
    the batch and are never cached."""
    if teacher is None or not views:
        return None
    frozen = FrozenTeacher(teacher.to(device), autocast, plan.model, features, batch_stats)
    fixed = [v for v in views if v == TeacherView.clean or isinstance(aug, NoAugment)]
    cached = None
    if fixed and cfg.trainer.teacher_logit_cache and not features and not batch_stats:  # every rank all of them
        clean = make_batches(cfg, splits, "train", aug=NoAugment(), device=device, shuffle=False)
        cached = CachedTeacherLogits(frozen, clean, len(splits.train_labels), splits.num_classes)
    fns = {v: cached if cached is not None and v in fixed else frozen for v in views}
    share = len(rank_share(torch.arange(cfg.trainer.batch_size), batches.rank, batches.world_size))
    return Teaching(fns, TeacherViews(batches, cfg.seed, device), share, device, frozen,
                    SecondViews(batches, cfg.seed, device))


def test_logits(teacher: nn.Module, batches, splits: ImageSplits, autocast: Callable) -> CachedTeacherLogits:
    """The teacher's logits on the test split, once per pack: what the students' fidelity is measured against."""
    return CachedTeacherLogits(FrozenTeacher(teacher, autocast), batches, len(splits.test_labels), splits.num_classes)


def fit(cells: list[Cell], splits: ImageSplits, device: torch.device,
        teacher: Optional[nn.Module], world: World = SINGLE) -> list[Union[dict, BaseException]]:
    """Train a pack's students together, each resuming from its own checkpoint; each its results or its error.
    Data-parallel, `world`'s rank trains on its shards; every rank returns the same results."""
    cfg = cells[0].cfg  # the cells share everything but the loss's settings
    t = cfg.trainer
    warn_late_milestones(cfg)
    plan = plan_compile(t, device)
    log_plan(plan)
    train_images = splits.split("train")[0]
    example = torch.zeros((2, *train_images.shape[1:]), device=device)  # the shapes a distiller's parts are built for
    if teacher is not None:
        teacher = teacher.to(device).eval()
    update = make_pack(cells, splits.num_classes, device, plan, teacher, example, splits.split("train")[1], world)
    students = update.students
    world.broadcast_state([m for s in students for m in (s.model, s.distiller)])
    aug = instantiate(cfg.aug)
    log_augmentation(cfg, aug)
    autocast = autocast_for(device, t.bf16)
    train_batches = make_batches(cfg, splits, "train", aug=aug, device=device, shuffle=True, world=world)
    # Every epoch is measured on test and, where there is one, on val: "best" is picked on val only.
    eval_batches = {split: make_batches(cfg, splits, split, aug=NoAugment(), device=device, shuffle=False,
                                        world=world)
                    for split in ("val", "test") if splits.split(split)[0] is not None}
    # The teacher runs only for a pack with a distilling cell (alpha > 0), and only while one trains.
    views = {s.view for s in students if s.alpha > 0}
    features = any(s.alpha > 0 and s.distiller.needs_features for s in students)
    teaching = make_teaching(cfg, teacher, splits, aug, train_batches, views, device, autocast, plan, features,
                             pack_teacher_batch_stats(students))
    if hasattr(aug, "pick"):  # CutMixPick: the teacher scores the pool the batch is picked from
        scorer = FrozenTeacher(teacher.to(device), autocast, plan.model)
        train_batches.scorer = lambda images: teacher_entropy(scorer(images, None).logits)
    teacher_on_test = test_logits(teacher, eval_batches["test"], splits, autocast) if views else None
    # The stream is shared, so the pack restarts at its least advanced cell; cells further on wait there.
    first = min(students, key=lambda s: s.start_epoch)
    if first.rng is not None:
        set_rng_state(first.rng, train_batches.generator)

    label = "teacher" if Stage(cfg.stage) == Stage.teacher else "pack"  # a teacher's training is no pack of the grid
    first_stage_epochs = pack_first_stage(students)
    epochs = first_stage_epochs + t.epochs
    progress = PackProgress(label, len(students), first.start_epoch, epochs)
    for epoch in range(first.start_epoch, epochs):
        first_stage = epoch < first_stage_epochs
        waiting = {i for i, s in enumerate(students) if s.error is not None or s.start_epoch > epoch}
        started = time.perf_counter()
        needs_teacher = any(s.alpha > 0 for i, s in enumerate(students) if i not in waiting)
        lrs = [float(s.first_optimizer.param_groups[0]["lr"]) if first_stage else update.lr(i)
               for i, s in enumerate(students)]
        train_batches.begin_epoch(epoch)
        stats = train_one_epoch(update, train_batches, teaching if needs_teacher else None,
                                autocast, epoch, waiting, plan, first_stage_epochs, world)
        world.broadcast_state([s.model for s in students], buffers_only=True)  # rank 0's BatchNorm statistics
        on_views = teaching.read() if needs_teacher else {}
        if not first_stage:  # the main schedule counts from the first stage's end
            update.end_epoch([i for i in range(len(students)) if i not in waiting])
        train_s = time.perf_counter() - started
        pack_images = sum(st["images"] for st in stats if isinstance(st, dict))  # every cell's, this epoch
        for i, (s, st) in enumerate(zip(students, stats)):
            if st is None:
                continue
            if isinstance(st, BaseException):
                s.error = st
                log.error("%s%s", _prefix(s), st)
                continue
            # A cell's epoch is the pack's shared training pass and its own evaluation, never its packmates':
            # measured from the epoch's start, a later cell's time would grow with its place in the pack.
            timing = {"train_time_s": train_s, "images_per_s": st.pop("images") / train_s}
            if first_stage:
                row = {"first_stage/epoch": epoch + 1, "first_stage/lr": lrs[i],
                       **{key.replace("train/", "first_stage/"): value for key, value in st.items()},
                       **timing, "eval_time_s": 0.0, "epoch_time_s": train_s}
                s.first_history.append(row)
                log.info("%sfirst stage epoch %d/%d  loss %.4f (ce %.4f)  lr %.4g  %.1fs", _prefix(s), epoch + 1,
                         first_stage_epochs, row["first_stage/loss"], row["first_stage/ce"], row["first_stage/lr"],
                         row["epoch_time_s"])
            else:
                row = {"epoch": epoch - first_stage_epochs + 1, "lr": lrs[i], **st,
                       **(on_views[s.view] if s.alpha > 0 else {})}
                evaluated = time.perf_counter()
                for split, batches in eval_batches.items():
                    fidelity = teacher_on_test if split == "test" and s.alpha > 0 else None
                    row.update(evaluate(s.model, batches, autocast, split, fidelity, world))
                eval_s = time.perf_counter() - evaluated
                row.update(**timing, eval_time_s=eval_s, epoch_time_s=train_s + eval_s)
                s.history.append(row)
                log_epoch(s, row, t.epochs)
            s.cell.log_metrics(row, epoch + 1)
            if world.writer and ((epoch + 1) % t.checkpoint_every == 0 or epoch + 1 in (first_stage_epochs, epochs)):
                save_checkpoint(s, update.states(i), train_batches.generator, epoch + 1, first_stage_epochs)
        progress.epoch_done(epoch, pack_images / train_s)
    return [s.error if s.error is not None else result(s, t.epochs) for s in students]


def log_augmentation(cfg: DictConfig, aug) -> None:
    """One line of what the training batches are made of: augment_scope=epoch changes the draws, so say it."""
    name = getattr(aug, "name", None) or type(aug).__name__
    if getattr(aug, "recipe", "cifar") == "imagenet":  # the crop is the recipe's: say which
        name += " (ImageNet recipe: RandomResizedCrop)"
    if isinstance(aug, NoAugment):
        log.info("augmentation: %s", name)
    elif cfg.trainer.augment_scope == AugmentScope.epoch:
        log.info("augmentation: %s over the whole training split once per epoch (trainer.augment_scope=epoch: "
                 "other draws of the same distribution than per batch, so other numbers)", name)
    else:
        log.info("augmentation: %s, drawn per batch (trainer.augment_scope=batch)", name)


def log_epoch(s: Student, row: dict, epochs: int) -> None:
    val = f"val top-1 {row['val/top1']:.2f}%  " if "val/top1" in row else ""
    diag = (f"  T.stddev {row['diag/t_stddev']:.4f} agree {row['diag/test_agreement']:.1f}%"
            if "diag/t_stddev" in row else "")
    log.info("%sepoch %d/%d  loss %.4f (ce %.4f kd %.4f)  %stest top-1 %.2f%% top-5 %.2f%%%s  lr %.4g  %.1fs",
             _prefix(s), row["epoch"], epochs, row["train/loss"], row["train/ce"], row["train/kd"], val,
             row["test/top1"], row["test/top5"], diag, row["lr"], row["epoch_time_s"])


def result(s: Student, epochs: int) -> dict:
    """What results.json holds of a cell's training: the main epochs' summary, and its first stage's epochs."""
    summary = summarize(s.history, epochs)
    if s.first_history:
        summary.update(first_stage_epochs=len(s.first_history), first_stage_history=s.first_history)
    return summary


def warn_late_milestones(cfg: DictConfig) -> None:
    """A schedule whose steps lie at or past the last epoch never steps there: say so, once per pack."""
    milestones = OmegaConf.select(cfg, "optim.scheduler.milestones")
    epochs = cfg.trainer.epochs
    late = [m for m in (milestones or []) if m >= epochs]
    if late:
        what = "teacher.optim" if Stage(cfg.stage) == Stage.teacher else "optim"
        epochs_key = "teacher.epochs" if what == "teacher.optim" else "trainer.epochs"
        log.warning("%s.scheduler.milestones=%s: %d of them at or past %s=%d, where the lr never steps%s. %s",
                    what, list(milestones), len(late), epochs_key, epochs,
                    " (a constant lr)" if len(late) == len(milestones) else "", milestone_advice(what, epochs))


def milestone_advice(what: str, epochs: int) -> str:
    """Milestones that step within `epochs`, or why none can. A milestone m decays the lr from epoch m on, so 0
    decays it before the first step: the range is 1 to epochs - 1."""
    if epochs < 2:
        return f"No milestone can step within {epochs} epoch: the lr stays constant (fine for a smoke run)."
    within = sorted({min(max(1, epochs * f // 8), epochs - 1) for f in (5, 7)})
    return f"Set milestones within the epochs (e.g. {what}.scheduler.milestones=[{','.join(map(str, within))}])."


def summarize(history: list[dict], epochs: int) -> dict:
    """The final epoch's test accuracy and, with a val split, the test top-1 at the epoch best on val (the
    earliest on a tie). `best_top1`, the best test top-1, picks the epoch on the test set itself: kept for
    comparison with code bases that report it, never kd's result."""
    if not history:
        raise ValueError(f"trainer.epochs={epochs}: nothing to train; set trainer.epochs >= 1")
    summary = {
        "final_top1": history[-1]["test/top1"],
        "final_top5": history[-1]["test/top5"],
        "best_top1": max(row["test/top1"] for row in history),
        "history": history,
    }
    if "val/top1" in history[0]:
        best = max(history, key=lambda row: row["val/top1"])  # max keeps the first of equal values
        summary.update(best_val_top1=best["val/top1"], test_top1_at_best_val=best["test/top1"],
                       best_epoch=best["epoch"])
    return summary
