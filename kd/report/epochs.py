"""What a cell trained for, in the tables' words: `5`, or `5 (+30 first stage)` for a distiller whose first stage
(AB, FSP, FT: kd/distillers/base.py) ran before its main epochs, so that cells trained for unequal lengths are
never read as equals. results.json records `epochs` (the main schedule) and `first_stage_epochs` (when it ran one).
"""
from __future__ import annotations

from typing import Any, Optional


def trained(result: dict[str, Any]) -> tuple[int, int]:
    """(main epochs, first-stage epochs) of a completed job."""
    return int(result["epochs"]), int(result.get("first_stage_epochs", 0))


def _done(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in results if r.get("status") == "completed" and "epochs" in r]


def uniform(results: list[dict[str, Any]]) -> bool:
    """Whether every completed job of `results` trained the same epochs, first stage included."""
    return len({trained(r) for r in _done(results)}) <= 1


def epochs_of(results: list[dict[str, Any]], unit: bool = False) -> Optional[str]:
    """`5`, `5 (+30 first stage)`, or `5 (+30 first stage at α=0.5, 1)` where only some alphas ran one (an alpha=0
    cell never does); with `unit`, `5 epochs (+30 first stage)`. None when no job of `results` completed."""
    done = _done(results)
    if not done:
        return None
    main = "/".join(str(n) for n in sorted({trained(r)[0] for r in done}))
    if unit:
        main += " epoch" + ("" if main == "1" else "s")
    alphas = {float(r["alpha"]) for r in done}
    staged: dict[int, set[float]] = {}
    for r in done:
        if trained(r)[1] > 0:
            staged.setdefault(trained(r)[1], set()).add(float(r["alpha"]))
    if not staged:
        return main
    notes = [f"+{n} first stage" + ("" if where == alphas else " at α=" + ", ".join(f"{a:g}" for a in sorted(where)))
             for n, where in sorted(staged.items())]
    return f"{main} ({'; '.join(notes)})"
