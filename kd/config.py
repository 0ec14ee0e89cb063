"""Structured-config schemas: a typo'd key or a wrong type fails when Hydra composes the config.

The top-level `Config` fixes the grid's axes; groups whose options take different
settings (data, aug, loss, logger) get one schema per option, which each option's YAML names first
in its defaults list (Hydra's "structured config as schema" pattern). An option added without a
schema (a user's own model, loss or aug: one file and one YAML) still composes; its parameters are
then checked against its `_target_`'s signature when the job starts, before any training.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import II, MISSING, DictConfig, OmegaConf


class Stage(Enum):
    student = "student"  # distill the student (trains the teacher first if it is not cached)
    teacher = "teacher"  # only train or verify the cached teacher
    data = "data"  # only download (if allowed) and verify the dataset: for clusters whose nodes have no internet


class Pipeline(Enum):
    device = "device"  # whole split on the training device, per-image augmentation there
    dataloader = "dataloader"  # the conventional PIL + DataLoader reference


class PackMode(Enum):
    loop = "loop"  # each student of a pack its own forward/backward/step: exact, the default
    stacked = "stacked"  # a pack's students as one grouped (else vmapped) model: fewer kernel launches on accelerators


class TeacherView(Enum):
    """What the teacher sees of each training image (docs/diagnostics.md, "What the teacher sees");
    Mixup/CutMix rules there."""

    same = "same"  # the student's augmented (and mixed) batch: Beyer et al.'s "consistent" teaching, the default
    clean = "clean"  # the un-augmented image, never mixed
    independent = "independent"  # its own draw of the same augmentation of the same image, from its own generator


class AugmentScope(Enum):
    """How often the training split is augmented (kd/data/pipeline.py, DevicePipeline)."""

    batch = "batch"  # each batch as it is drawn: the default, and what every result before the key was trained with
    epoch = "epoch"  # the whole split once per epoch on the device, each step a slice of it: no augmentation per step


class Objective(Enum):
    """What a search (a non-basic sweeper: conf/hparams_search/) maximizes: the val split's top-1, never the
    test set's (docs/search.md)."""

    best_val_top1 = "best_val_top1"  # the best epoch's val top-1: the epoch kd reports test_top1_at_best_val at
    final_val_top1 = "final_val_top1"  # the last epoch's val top-1


class WandbMode(Enum):
    auto = "auto"  # online if W&B credentials exist, else offline; a set WANDB_MODE decides instead
    online = "online"
    offline = "offline"
    disabled = "disabled"


@dataclass
class ModelConfig:
    _target_: str = MISSING  # a factory `fn(num_classes) -> nn.Module`


@dataclass
class CifarDataConfig:
    _target_: str = MISSING
    root: str = MISSING
    download: bool = True
    mean: list[float] = MISSING
    std: list[float] = MISSING
    train_size: Optional[int] = None  # a class-balanced subset of the training split; None: all of it
    val_size: Optional[int] = None  # a class-balanced hold-out of the training split to pick epochs on; None: none
    split_seed: int = 0  # fixes both


@dataclass
class FolderDataConfig:
    _target_: str = "kd.data.folder"
    root: str = MISSING  # holds train/<class>/<image>, test/<class>/<image>, optionally val/<class>/<image>
    image_size: int = 32  # pixels: shorter side resized to it (bilinear, antialiased), then center-cropped
    mean: Optional[list[float]] = None  # None: computed from the train/ images
    std: Optional[list[float]] = None
    train_size: Optional[int] = None
    val_size: Optional[int] = None  # must stay None when the folder has a val/ split
    split_seed: int = 0
    cache_dir: str = MISSING  # where the decoded images are cached
    stream: str = "auto"  # true | false | auto: decode per batch from the files (kd/data/stream.py), or once into memory
    stream_above_gb: float = 16.0  # auto streams when the decoded splits (3 x image_size^2 bytes each) exceed this
    crop_pct: float = 1.0  # clean view: Resize(image_size / crop_pct) + CenterCrop(image_size); ImageNet's 0.875
    gpu_decode: bool = False  # streaming on CUDA: decode JPEGs on the device (nvJPEG); unmeasured on a GPU
    aug_recipe: str = "cifar"  # the crop of aug=fc/fcra (their aug.recipe): cifar (padded) or imagenet (resized)


@dataclass
class ImageNetDataConfig:
    _target_: str = "kd.data.imagenet"
    root: str = MISSING  # ILSVRC-2012: train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (kd/data/imagenet_layouts.py)
    cache_dir: str = MISSING
    mean: list[float] = MISSING
    std: list[float] = MISSING
    image_size: int = 224
    crop_pct: float = 0.875  # evaluation: Resize(256) + CenterCrop(224)
    stream: str = "auto"
    stream_above_gb: float = 16.0
    gpu_decode: bool = False
    aug_recipe: str = "imagenet"  # aug=fc/fcra crop with RandomResizedCrop, as torchvision's ImageNet recipe
    train_size: Optional[int] = None
    val_size: Optional[int] = None  # a hold-out of train/ (val/ is the test split)
    split_seed: int = 0


@dataclass
class TinyImageNetDataConfig(ImageNetDataConfig):
    _target_: str = "kd.data.tiny_imagenet"  # root: wnids.txt, train/<wnid>/images/, val/images/ + val_annotations.txt
    mean: Optional[list[float]] = None  # None: computed from the train/ images
    std: Optional[list[float]] = None
    image_size: int = 64
    crop_pct: float = 1.0
    aug_recipe: str = "cifar"  # aug=fc/fcra: RandomCrop(64, padding=8), as the 64 px images are stored


@dataclass
class DigitsDataConfig:
    _target_: str = "kd.data.digits"
    image_size: int = 16
    test_fraction: float = 0.2
    split_seed: int = 0
    train_size: Optional[int] = None  # a stratified subset of the training split; None: all of it
    val_size: Optional[int] = None  # a stratified hold-out of the training split; None: none
    mean: list[float] = MISSING
    std: list[float] = MISSING


@dataclass
class NoAugConfig:
    _target_: str = "kd.data.augment.NoAugment"


@dataclass
class FlipCropConfig:
    _target_: str = "kd.data.augment.FlipCrop"
    padding: Optional[int] = None  # pixels; None: image size / 8 (4 on CIFAR)
    recipe: str = "cifar"  # cifar: padded RandomCrop; imagenet: RandomResizedCrop (kd/data/augment.py)


@dataclass
class FlipCropRandAugmentConfig:
    _target_: str = "kd.data.augment.FlipCropRandAugment"
    padding: Optional[int] = None  # pixels; None: image size / 8 (4 on CIFAR)
    num_ops: int = 2
    magnitude: int = 14
    recipe: str = "cifar"  # cifar: padded RandomCrop; imagenet: RandomResizedCrop (kd/data/augment.py)


@dataclass
class KDLossConfig:
    _target_: str = "kd.distillers.kd.KD"
    temperature: float = 4.0
    scale: float = 1.0  # L = scale * ((1 - alpha) * CE + alpha * term): kd/distillers/base.py
    standardize: bool = False  # z-score each sample's logits before the temperature: kd/distillers/logits.py
    # CTKD (kd/distillers/temperature.py): the temperature learned through a gradient-reversal layer, within the range
    learned_temperature: bool = False  # true: `temperature` is unread
    temperature_range: list[float] = field(default_factory=lambda: [1.0, 21.0])  # [lowest, highest]
    reversal_lambda: list[float] = field(default_factory=lambda: [0.0, 1.0])  # the reversal's weight, first -> last
    reversal_epochs: int = 10  # epochs of the cosine ramp of reversal_lambda; 0: the last value from the start


@dataclass
class SGDConfig:
    _target_: str = "torch.optim.SGD"
    _partial_: bool = True
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False


@dataclass
class DOTConfig(SGDConfig):
    """optim=dot (kd/training/dot.py): a subclass, so that it merges where the schema types SGD's node."""

    _target_: str = "kd.training.dot.DOT"
    delta: float = 0.075  # the CE's momentum is momentum - delta, the distillation term's momentum + delta


@dataclass
class MultiStepConfig:
    _target_: str = "torch.optim.lr_scheduler.MultiStepLR"
    _partial_: bool = True
    milestones: list[int] = field(default_factory=lambda: [150, 180, 210])  # epochs
    gamma: float = 0.1


@dataclass
class OptimConfig:
    optimizer: SGDConfig = field(default_factory=SGDConfig)
    scheduler: MultiStepConfig = field(default_factory=MultiStepConfig)


@dataclass
class CELossConfig:
    _target_: str = "kd.distillers.base.CrossEntropy"


@dataclass
class FlipCropTrivialAugmentConfig:
    _target_: str = "kd.data.augment_ladder.FlipCropTrivialAugment"
    padding: Optional[int] = None
    num_magnitude_bins: int = 31


@dataclass
class FlipCropAutoAugmentConfig:
    _target_: str = "kd.data.augment_ladder.FlipCropAutoAugment"
    padding: Optional[int] = None


@dataclass
class FlipCropCutoutConfig:
    _target_: str = "kd.data.augment_ladder.FlipCropCutout"
    padding: Optional[int] = None
    size: Optional[int] = None  # pixels; None: image size / 2 (16 on CIFAR)


@dataclass
class FlipCropMixupConfig:
    _target_: str = "kd.data.augment_ladder.FlipCropMixup"
    padding: Optional[int] = None
    alpha: float = 0.2  # lambda ~ Beta(alpha, alpha)


@dataclass
class FlipCropCutMixConfig:
    _target_: str = "kd.data.augment_ladder.FlipCropCutMix"
    padding: Optional[int] = None
    alpha: float = 1.0  # lambda ~ Beta(alpha, alpha)


@dataclass
class FlipCropCutMixPickConfig:
    _target_: str = "kd.data.augment_ladder.FlipCropCutMixPick"
    padding: Optional[int] = None
    alpha: float = 1.0  # lambda ~ Beta(alpha, alpha), per CutMix draw
    runs: int = 2  # CutMix draws pooled per batch (Wang et al.'s mix_n_run)


@dataclass
class TeacherConfig:
    """The teacher's own recipe: nothing a student sets (trainer.epochs, optim, loss, aug, alpha) changes it.

    Its defaults are the CIFAR benchmark recipe (RepDistiller: 240 epochs, batch 64, SGD lr 0.05);
    a dataset may bring its own (data/digits.yaml). Speed switches (device, bf16, compile, pipeline)
    come from `trainer`, as they do not change what is trained.
    """

    arch: Any = MISSING  # a model option (ModelConfig, or a user's model with parameters of its own)
    aug: Any = MISSING  # the teacher's own augmentation, fixed across the grid
    loss: Any = field(default_factory=CELossConfig)  # plain cross-entropy
    optim: OptimConfig = field(default_factory=OptimConfig)
    epochs: int = 240
    batch_size: int = 64
    seed: int = II("seed")  # each seed of a grid has its own teacher
    min_top1: Optional[float] = None  # %; below it the teacher is refused. None: twice chance (100/classes)
    checkpoint: Optional[str] = None  # use this file instead of the cache
    weights: Optional[str] = None  # torchvision's published weights for arch (IMAGENET1K_V1): downloaded, not trained
    cache_dir: str = MISSING


@dataclass
class TrainerConfig:
    epochs: int = 240
    batch_size: int = 64
    eval_batch_size: int = 1000
    device: str = "auto"  # auto (cuda if available) | cpu | cuda | cuda:N
    pipeline: Pipeline = Pipeline.device
    num_workers: int = 2  # DataLoader workers, pipeline=dataloader only
    bf16: bool = True  # bf16 autocast; CUDA only
    channels_last: bool = True  # NHWC activations; faster on CUDA and on CPUs
    compile: bool = True  # torch.compile the students and the teacher; CUDA only
    graph_capture: bool = False  # also CUDA graphs (mode=reduce-overhead); needs compile; see kd/training/capture.py
    cudnn_benchmark: bool = True  # CUDA only; ignored when deterministic
    deterministic: bool = False  # torch.use_deterministic_algorithms
    teacher_logit_cache: bool = True  # aug=none: teacher logits computed once, reused every epoch
    checkpoint_every: int = 1  # epochs between resumable checkpoints
    pack_mode: PackMode = PackMode.loop  # how a pack's students train (see kd/training/stacking.py)
    teacher_view: TeacherView = TeacherView.same  # what the teacher sees in training (kd/training/teacher_views.py)
    augment_scope: AugmentScope = AugmentScope.batch  # augment per batch, or the whole split once per epoch (device)
    devices: int = 1  # data-parallel ranks per node (docs/distributed.md): the global batch is batch_size
    nodes: int = 1  # nodes of a data-parallel job; devices x nodes ranks in all
    sync_bn: bool = False  # BatchNorm over the global batch (SyncBatchNorm); False: per rank, torchvision's recipe


@dataclass
class NullLoggerConfig:
    _target_: str = "kd.tracking.null.NullTracker"


@dataclass
class WandbLoggerConfig:
    _target_: str = "kd.tracking.wandb_tracker.WandbTracker"
    project: str = "kd"
    entity: Optional[str] = None  # None: the account's default entity
    group: Optional[str] = None  # None: the sweep dir in a multirun (all its jobs share it), else no group
    tags: list[str] = field(default_factory=list)
    mode: WandbMode = WandbMode.auto
    dir: Optional[str] = None  # where the wandb/ folder goes; None: the job's output dir
    finish_timeout_s: float = 300.0  # cap on the end-of-run upload wait; what is left stays on disk for `wandb sync`


@dataclass
class Config:
    data: Any = MISSING
    model: Any = MISSING  # ModelConfig for kd's own; a user's model may take parameters of its own
    teacher: TeacherConfig = MISSING
    aug: Any = MISSING
    loss: Any = MISSING
    optim: OptimConfig = MISSING
    trainer: TrainerConfig = MISSING
    logger: Any = MISSING
    alpha: float = 0.5  # weight of the distiller's term: (1 - alpha) * CE + alpha * term (KD's: T^2 * KL)
    seed: int = 0
    stage: Stage = Stage.student
    objective: Objective = Objective.best_val_top1  # what each trial of a search returns; unread by a grid
    out_dir: str = MISSING


def job_dir() -> str:
    """`out_dir`: the running job's output dir (hydra.runtime.output_dir). Hydra sets that only when a job
    runs; before (`--cfg job --resolve`) it is where a single run would write, or the sweep dir of a grid."""
    hydra_cfg = HydraConfig.get()
    runtime = hydra_cfg.runtime
    if not OmegaConf.is_missing(runtime, "output_dir") and runtime.output_dir is not None:
        return runtime.output_dir
    return hydra_cfg.sweep.dir if hydra_cfg.mode == RunMode.MULTIRUN else hydra_cfg.run.dir


def register_schemas() -> None:
    OmegaConf.register_new_resolver("kd.job_dir", job_dir, replace=True)
    cs = ConfigStore.instance()
    cs.store(name="schema", node=Config)
    cs.store(group="schema/data", name="cifar", node=CifarDataConfig)
    cs.store(group="schema/data", name="digits", node=DigitsDataConfig)
    cs.store(group="schema/data", name="folder", node=FolderDataConfig)
    cs.store(group="schema/data", name="imagenet", node=ImageNetDataConfig)
    cs.store(group="schema/data", name="tiny_imagenet", node=TinyImageNetDataConfig)
    cs.store(group="schema/aug", name="none", node=NoAugConfig)
    cs.store(group="schema/aug", name="fc", node=FlipCropConfig)
    cs.store(group="schema/aug", name="fcra", node=FlipCropRandAugmentConfig)
    cs.store(group="schema/aug", name="fcta", node=FlipCropTrivialAugmentConfig)
    cs.store(group="schema/aug", name="fcaa", node=FlipCropAutoAugmentConfig)
    cs.store(group="schema/aug", name="fccutout", node=FlipCropCutoutConfig)
    cs.store(group="schema/aug", name="fcmixup", node=FlipCropMixupConfig)
    cs.store(group="schema/aug", name="fccutmix", node=FlipCropCutMixConfig)
    cs.store(group="schema/aug", name="fccutmixpick", node=FlipCropCutMixPickConfig)
    cs.store(group="schema/loss", name="kd", node=KDLossConfig)
    cs.store(group="schema/optim", name="dot", node=DOTConfig)
    cs.store(group="schema/model", name="model", node=ModelConfig)
    cs.store(group="schema/logger", name="none", node=NullLoggerConfig)
    cs.store(group="schema/logger", name="wandb", node=WandbLoggerConfig)


class UnknownKeyError(ValueError):
    """A key that no schema has: a typo that `+key=value` slipped past Hydra's composition check."""


def check_known_keys(cfg: DictConfig) -> None:
    """Refuse keys outside kd's schemas, however they got in (`+trainer.epocs=3` adds one past the struct
    check). Nodes built from a `_target_` (models, augs, losses, optimizers, data, logger) are checked
    against their callable's signature instead (kd/runs/targets.py), so users' own options keep working."""
    _check_node(cfg, Config, "")


def _check_node(node: DictConfig, schema: type, prefix: str) -> None:
    hints = typing.get_type_hints(schema)
    names = [f.name for f in dataclasses.fields(schema)]
    for key in node:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise UnknownKeyError(f"{prefix}{key} is not a setting kd knows{hint}; it takes {', '.join(names)}. "
                                  f"Fix or drop the override that adds it.")
        child = node[key]
        if dataclasses.is_dataclass(hints[key]) and isinstance(child, DictConfig) and "_target_" not in child:
            _check_node(child, hints[key], f"{prefix}{key}.")


# Keys that say where things live or how they are tracked, not what is trained: a finished
# or interrupted job may be resumed with other values of these.
NON_DEFINING_KEYS = ("logger", "out_dir", "objective", "teacher.cache_dir", "data.root", "data.download",
                     "data.cache_dir")
# Keys added after results and checkpoints were written without them: at these values (what those jobs did)
# they are left out, so that a sweep begun by an older kd still resumes and skips its finished cells.
LEARNED_TEMPERATURE_OFF = {"learned_temperature": False, "temperature_range": [1.0, 21.0],
                           "reversal_lambda": [0.0, 1.0], "reversal_epochs": 10}  # CTKD's keys, at their defaults
ADDED_KEYS_AT_OLD_BEHAVIOUR = {"trainer.teacher_view": TeacherView.same.value,
                               "trainer.augment_scope": AugmentScope.batch.value,
                               "loss.teacher_batch_stats": False,  # OFD's teacher in eval mode (kd/distillers/ofd.py)
                               **{f"{node}.{key}": value for node in ("loss", "loss.terms.kd")  # KD in kd_ls, crd_kd
                                  for key, value in LEARNED_TEMPERATURE_OFF.items()},
                               "aug.recipe": "cifar", "data.aug_recipe": "cifar", "data.stream": "auto",
                               "data.stream_above_gb": 16.0, "data.crop_pct": 1.0, "data.gpu_decode": False,
                               "teacher.weights": None,
                               "trainer.devices": 1, "trainer.nodes": 1, "trainer.sync_bn": False}


def without_old_added(node: dict, group: str) -> dict:
    """`node`, the config of `group` ("data", "aug"), less its ADDED_KEYS_AT_OLD_BEHAVIOUR at their old values:
    what a teacher's recipe hashes, so that the teachers cached by an older kd are still found."""
    for dotted, old in ADDED_KEYS_AT_OLD_BEHAVIOUR.items():
        parent, _, leaf = dotted.rpartition(".")
        if parent == group and leaf in node and node[leaf] == old:
            node.pop(leaf)
    return node


# Datasets whose root is their content: a folder's images are whatever data.root holds (CIFAR's files,
# by contrast, are the same wherever they are: torchvision checks each one's md5).
ROOT_IS_CONTENT = ("kd.data.folder", "kd.data.imagenet", "kd.data.tiny_imagenet")


# Augmentations moved into kd/data/ on 2026-12-06 (kd/__init__.py: MOVED). A cell's identity and a teacher's recipe
# name them by the module they were recorded under before, so that the results, checkpoints and cached teachers of
# an older kd still resume, skip and are reused.
RECORDED_MODULES = {"kd.data.augment.": "kd.augment.", "kd.data.augment_ladder.": "kd.augment_ladder."}


def as_recorded(node: Any) -> Any:
    """A config container with each `_target_` under the name a cell's identity records (RECORDED_MODULES)."""
    if isinstance(node, dict):
        return {k: _recorded_target(v) if k == "_target_" else as_recorded(v) for k, v in node.items()}
    if isinstance(node, list):
        return [as_recorded(v) for v in node]
    return node


def _recorded_target(target: Any) -> Any:
    for new, old in RECORDED_MODULES.items():
        if isinstance(target, str) and target.startswith(new):
            return old + target[len(new):]
    return target


def defining_config(cfg: DictConfig) -> dict:
    """The resolved config minus NON_DEFINING_KEYS: what must match to skip or resume a job."""
    container = as_recorded(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    data = container.get("data", {})
    root = data.get("root") if data.get("_target_") in ROOT_IS_CONTENT else None
    for dotted in (*NON_DEFINING_KEYS, *ADDED_KEYS_AT_OLD_BEHAVIOUR):
        *parents, leaf = dotted.split(".")
        node = container
        for key in parents:
            node = node.get(key, {})
        if dotted not in ADDED_KEYS_AT_OLD_BEHAVIOUR or node.get(leaf) == ADDED_KEYS_AT_OLD_BEHAVIOUR[dotted]:
            node.pop(leaf, None)
    if root is not None:  # absolute: the same relative root typed in another directory is another folder
        data["root"] = os.path.abspath(os.path.expanduser(root))
    return container

