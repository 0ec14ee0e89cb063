"""CTKD's learned temperature, the switch `loss.learned_temperature` of KD and DKD: its loss and gradients (the
student's logits and the temperature's own, reversed and weighted by the curriculum's lambda) against the authors'
code in float64 (tests/fixtures/logit_references.json), its recipes, and on the real loop: packed exactly as alone,
logged per epoch, checkpointed and resumed as never interrupted."""
from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import instantiate

from conftest import FAST, cell_dir, compose_config
from kd.config import defining_config
from kd.distillers.base import Outputs
from kd.distillers.combined import Combined
from kd.distillers.dkd import DKD
from kd.distillers.kd import KD, kd_term
from kd.distillers.temperature import reversal_weight
from kd.runs.results import RESULTS_FILE, read_results
from logit_references import inputs, recorded
from reliability import metrics, same_weights
from test_distiller_runs import killed_after_one_epoch, resumed_as_uninterrupted, sweep

CASES = {  # kd's distiller for each case the authors' code was run on
    "ctkd": lambda: KD(learned_temperature=True),
    "ctkd_epoch5": lambda: KD(learned_temperature=True),
    "ctkd_dkd": lambda: DKD(alpha=1.0, beta=8.0, warmup=0, learned_temperature=True),  # CTKD's DKD has no warmup
    "ctkd_ls": lambda: KD(standardize=True, learned_temperature=True),
}


def learned(case: str):
    """kd's distiller for the case in float64, its temperature's scalar set as the authors' Global_T was."""
    theirs = recorded()["cases"][case]
    distiller = CASES[case]().double()
    with torch.no_grad():
        distiller.learned_temperature.raw.fill_(theirs["raw"])
    return distiller, theirs


@pytest.mark.parametrize("case", CASES)
def test_the_term_and_both_gradients_are_the_authors(case):
    distiller, theirs = learned(case)
    s, t, y = inputs()
    s.requires_grad_(True)
    epoch = theirs["their_epoch"] - 1  # their epochs count from 1
    assert reversal_weight(epoch, 0.0, 1.0, 10) == -theirs["decay_value"]  # their layer multiplies by the negative
    parts = distiller.term(Outputs(s), Outputs(t), y, epoch)
    parts["kd"].backward()
    close = dict(rtol=1e-10, atol=1e-12)
    assert parts["kd"].dtype == torch.float64
    torch.testing.assert_close(parts["kd"].detach(), torch.tensor(theirs["loss"], dtype=torch.float64), **close)
    torch.testing.assert_close(s.grad, torch.tensor(theirs["grad"], dtype=torch.float64), **close)
    torch.testing.assert_close(parts["temperature"], torch.tensor(theirs["temperature"], dtype=torch.float64), **close)
    torch.testing.assert_close(distiller.learned_temperature.raw.grad,
                               torch.tensor(theirs["temperature_grad"], dtype=torch.float64), **close)


def test_the_temperature_ascends_the_term_weighted_by_the_curriculums_lambda():
    """The formula (the paper's Eq. and the authors' loops.py): T = 1 + 20 sigmoid(raw), raw's gradient -lambda
    times the term's; lambda a cosine from 0 to 1 over 10 epochs, then 1."""
    s, t, y = inputs()
    raw = torch.tensor(0.25, dtype=torch.float64, requires_grad=True)
    (descent,) = torch.autograd.grad(kd_term(s, t, 1.0 + 20.0 * torch.sigmoid(raw)), raw)
    for epoch in (0, 4, 9, 30):
        lam = (1.0 - math.cos(math.pi * min(epoch + 1, 10) / 10)) / 2
        assert reversal_weight(epoch, 0.0, 1.0, 10) == pytest.approx(lam, rel=1e-15)
        distiller = KD(learned_temperature=True).double()
        with torch.no_grad():
            distiller.learned_temperature.raw.fill_(0.25)
        distiller.term(Outputs(s), Outputs(t), y, epoch)["kd"].backward()
        torch.testing.assert_close(distiller.learned_temperature.raw.grad, -lam * descent, rtol=1e-12, atol=1e-15)
    assert reversal_weight(0, 0.5, 2.0, 0) == 2.0  # no ramp: the last value from the first epoch


def test_the_recipes_compose_and_the_switch_is_off_by_default():
    ctkd = instantiate(compose_config(["loss=ctkd", "alpha=0.9"]).loss)
    assert type(ctkd) is KD and ctkd.learned_temperature is not None and not ctkd.standardize
    temperature = ctkd.learned_temperature
    assert (temperature.low, temperature.high, temperature.reversal, temperature.reversal_epochs) == (
        1.0, 21.0, (0.0, 1.0), 10)
    assert float(temperature(0).detach()) == pytest.approx(1.0 + 20.0 / (1.0 + math.exp(-1.0)))  # Global_T starts at 1
    ctkd_ls = instantiate(compose_config(["loss=ctkd_ls", "alpha=0.9"]).loss)
    assert type(ctkd_ls) is Combined and ctkd_ls.weights == {"kd": 10.0}  # 0.1 CE + 0.9 * 10 KD = 0.1 CE + 9 KD
    assert ctkd_ls.terms["kd"].standardize and ctkd_ls.terms["kd"].learned_temperature is not None
    dkd = instantiate(compose_config(["loss=dkd", "loss.learned_temperature=true", "loss.reversal_epochs=5"]).loss)
    assert dkd.learned_temperature.reversal_epochs == 5 and [n for n, _ in dkd.named_parameters()] == [
        "learned_temperature.raw"]  # what trains with the student and its checkpoint keeps
    for name in ("kd", "dkd", "kd_ls"):  # no learned temperature unless asked
        assert not list(instantiate(compose_config([f"loss={name}"]).loss).parameters()), name


@pytest.mark.parametrize("setting", [
    {"temperature_range": [0.0, 3.0]}, {"temperature_range": [5.0, 2.0]}, {"temperature_range": [1.0]},
    {"temperature_range": [1.0, math.inf]}, {"reversal_lambda": [0.0, -1.0]}, {"reversal_epochs": -1},
])
def test_a_bad_curriculum_is_refused_naming_its_key_even_with_the_switch_off(setting):
    for make in (KD, DKD):
        for on in (True, False):
            with pytest.raises(ValueError, match=f"loss.{next(iter(setting))}="):
                make(learned_temperature=on, **setting)


def test_old_cells_keep_their_identity_and_a_learned_temperature_is_part_of_a_cells(tmp_path):
    """KD's new keys at their defaults are left out of a cell's identity, so a sweep begun before them resumes."""
    for loss, node in (("kd", "loss"), ("dkd", "loss"), ("kd_ls", "terms")):
        config = defining_config(compose_config([f"loss={loss}"], out_dir=tmp_path))["loss"]
        config = config["terms"]["kd"] if node == "terms" else config
        assert not {"learned_temperature", "temperature_range", "reversal_lambda", "reversal_epochs"} & set(config)
    assert defining_config(compose_config(["loss=ctkd"], out_dir=tmp_path))["loss"]["learned_temperature"] is True


CELL = [*FAST, "teacher=resnet8", "aug=fc", "loss=ctkd", "trainer.epochs=2", "loss.reversal_epochs=2"]


@pytest.mark.slow
def test_a_pack_of_ctkd_cells_trains_each_as_alone_and_logs_its_temperature_per_epoch(tmp_path):
    grid = [*CELL, "alpha=0.5,1.0"]
    packed, _ = sweep(tmp_path, "packed", grid)
    alone, _ = sweep(tmp_path, "alone", [*grid, "hydra/launcher=basic"])
    for alpha in ("0.5", "1.0"):
        job = cell_dir(packed, grid, f"alpha={alpha}")
        result = read_results(job / RESULTS_FILE)
        assert result["status"] == "completed" and result["temperature"] is None  # not loss.temperature, unread
        assert metrics(result) == metrics(read_results(alone / job.name / RESULTS_FILE)), alpha
        assert same_weights(job / "checkpoint.pt", alone / job.name / "checkpoint.pt"), alpha
        temperatures = [row["train/temperature"] for row in result["history"]]
        assert len(set(temperatures)) == 2 and all(1.0 < t < 21.0 for t in temperatures), temperatures
        saved = torch.load(job / "checkpoint.pt", weights_only=True)["distiller"]
        assert set(saved) == {"learned_temperature.raw"} and float(saved["learned_temperature.raw"]) != 1.0


@pytest.mark.chaos
def test_a_ctkd_cell_killed_after_an_epoch_resumes_its_temperature_to_the_uninterrupted_result(tmp_path):
    args = [*CELL, "alpha=0.5", "trainer.deterministic=true"]
    reference, killed, saved = killed_after_one_epoch(tmp_path, args)
    assert set(saved["distiller"]) == {"learned_temperature.raw"}
    a, b = resumed_as_uninterrupted(tmp_path, args, killed, reference)
    assert torch.equal(a["learned_temperature.raw"], b["learned_temperature.raw"])
    rows = [read_results(d / RESULTS_FILE)["history"] for d in (killed, reference)]
    assert [r["train/temperature"] for r in rows[0]] == [r["train/temperature"] for r in rows[1]]
