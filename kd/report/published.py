"""The field's published CIFAR-100 top-1 figures beside kd's, each compared with the statistic it is.

The sources do not report the same thing: RepDistiller's figures (the KD column every paper copies) are the last
epoch's test top-1 (its train_student.py: "The results reported in the paper/README is from the last epoch"), while
mdistiller's trainer, and the forks built on it (logit standardization), report the best epoch's, picked on the
test set (mdistiller/engine/trainer.py keeps best_acc). kd records both (results.json `final_top1`, `best_top1`), so
beside each published figure kd prints its own of the same statistic, and says which; where a source does not say
(TTM's README, DIST's mean of runs) kd prints both of its own.

A figure is matched to kd's cells by the pair (teacher, student), CIFAR-100, the benchmark's augmentation (fc), and
the keys of its recipe in kd (`match`: dotted keys of the cell's resolved config, as docs/distillers.md gives them).
Only the keys that make the method and its weighting are matched, not its tuned values (TTM's per-pair gamma and
beta): each row names the kd cell it read (its overrides but the seed, whose values it pools), so a cell run with
other values is seen as such.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional

from kd.report.stats import estimate


class Published(NamedTuple):
    method: str
    teacher: str
    student: str
    top1: float
    statistic: str  # "final" (last epoch), "best" (best epoch, picked on test) or "unstated"
    source: str  # repository and file
    match: dict[str, Any]  # dotted keys of a cell's resolved config
    data: str = "cifar100"
    aug: str = "fc"  # the benchmark's RandomCrop + flip


STATISTIC = {"final": ("final_top1", "last epoch"), "best": ("best_top1", "best epoch, picked on test")}
REPDISTILLER = "HobbitLong/RepDistiller README.md (train_student.py: last epoch)"
MDISTILLER = "megvii-research/mdistiller README.md (engine/trainer.py: best epoch)"
LS = "sunshangquan/logit-standardization-KD README.md (mdistiller's trainer: best epoch)"

KD = {"loss._target_": "kd.distillers.kd.KD", "alpha": 0.9, "loss.scale": 1.0, "loss.standardize": False}
DKD = {"loss._target_": "kd.distillers.dkd.DKD", "alpha": 0.5, "loss.scale": 2.0, "loss.standardize": False}
# pair -> (teacher, student, RepDistiller's KD, mdistiller's DKD, DKD's beta there)
PAIRS = {
    "resnet56-resnet20": ("resnet56", "resnet20", 70.66, 71.97, 2.0),
    "resnet110-resnet32": ("resnet110", "resnet32", 73.08, 74.11, 2.0),
    "resnet32x4-resnet8x4": ("resnet32x4", "resnet8x4", 73.33, 76.32, 8.0),
    "wrn40_2-wrn16_2": ("wrn_40_2", "wrn_16_2", 74.92, 76.23, 6.0),
    "wrn40_2-wrn40_1": ("wrn_40_2", "wrn_40_1", 73.54, 74.81, 6.0),
    "vgg13-vgg8": ("vgg13", "vgg8", 72.98, 74.68, 6.0),
    "resnet32x4-shufflev1": ("resnet32x4", "shufflev1", 74.07, 76.45, 8.0),
    "wrn40_2-shufflev1": ("wrn_40_2", "shufflev1", 74.83, 76.70, 8.0),
    "vgg13-mobilenetv2": ("vgg13", "mobilenetv2", 67.37, 69.71, 6.0),
    "resnet50-mobilenetv2": ("resnet50", "mobilenetv2", 67.35, 70.35, 8.0),
    "resnet32x4-shufflev2": ("resnet32x4", "shufflev2", 74.45, 77.07, 8.0),  # mdistiller labels it MobileNet-V2
}
X4 = ("resnet32x4", "resnet8x4")

PUBLISHED = [
    *(Published("KD", t, s, kd, "final", REPDISTILLER, KD) for t, s, kd, _, _ in PAIRS.values()),
    *(Published("DKD", t, s, dkd, "best", MDISTILLER, {**DKD, "loss.beta": beta})
      for t, s, _, dkd, beta in PAIRS.values()),
    Published("DIST", *X4, 76.31, "unstated", "hunto/DIST_KD README.md (mean ± std of runs)",
              {"loss._target_": "kd.distillers.dist.DIST", "alpha": 0.5, "loss.scale": 2.0, "loss.standardize": False}),
    Published("TTM", *X4, 76.17, "unstated", "zkxufo/TTM README.md (mean of 5 runs)",
              {"loss._target_": "kd.distillers.ttm.TTM", "alpha": 0.5, "loss.scale": 2.0, "loss.standardize": False}),
    Published("WTTM", *X4, 76.06, "unstated", "zkxufo/TTM README.md (mean of 5 runs)",
              {"loss._target_": "kd.distillers.wttm.WTTM", "alpha": 0.5, "loss.scale": 2.0, "loss.standardize": False}),
    Published("KD+LS", *X4, 76.62, "best", LS,
              {"loss._target_": "kd.distillers.combined.Combined", "alpha": 0.9, "loss.terms.kd.standardize": True}),
    Published("DKD+LS", *X4, 77.01, "best", LS, {**DKD, "loss.standardize": True}),
]


def _select(config: dict, dotted: str) -> Any:
    node: Any = config
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def matches(result: dict[str, Any], entry: Published) -> bool:
    """Whether a completed cell ran `entry`'s method on its pair and data."""
    config = result.get("config") or {}
    return (result.get("status") == "completed" and result.get("data") == entry.data and result.get("aug") == entry.aug
            and result.get("teacher") == entry.teacher and result.get("model") == entry.student
            and all(_select(config, k) == v for k, v in entry.match.items()))


def _kd_value(cells: list[dict[str, Any]], statistic: str) -> str:
    if statistic in STATISTIC:
        metric, words = STATISTIC[statistic]
        return f"{estimate([c[metric] for c in cells]).format()} ({words})"
    return " / ".join(f"{estimate([c[metric] for c in cells]).format()} ({words})" for metric, words in STATISTIC.values())


def cell_name(result: dict[str, Any]) -> str:
    """The cell's overrides but its seed: what its seeds share."""
    return " ".join(f"{k}={v}" for k, v in sorted(result.get("overrides", {}).items()) if k != "seed") or "(defaults)"


def published_rows(results: list[dict[str, Any]], table: Optional[list[Published]] = None) -> list[dict[str, str]]:
    """One row per published figure and kd cell that ran it: the figure, its statistic, kd's of the same over the
    cell's seeds."""
    rows = []
    for entry in PUBLISHED if table is None else table:
        cells: dict[str, list[dict[str, Any]]] = {}
        for r in results:
            if matches(r, entry):
                cells.setdefault(cell_name(r), []).append(r)
        words = STATISTIC[entry.statistic][1] if entry.statistic in STATISTIC else "not stated"
        rows += [{"pair": f"{entry.teacher} -> {entry.student}", "method": entry.method,
                  "published": f"{entry.top1:.2f} ({words})", "source": entry.source, "kd cell": name,
                  "kd": _kd_value(seeds, entry.statistic), "seeds": str(len(seeds))}
                 for name, seeds in cells.items()]
    return rows


def format_published(rows: list[dict[str, str]]) -> str:
    """The rows as a markdown table."""
    columns = ["pair", "method", "published", "source", "kd cell", "kd", "seeds"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row[c] for c in columns) + " |" for row in rows])
