"""How far a running grid is and when it will end: one progress line per pack every so often, read off the
clock only (never the device, so no host sync), and the whole grid's estimate once its first epoch is timed.

    progress: 3 of 60 epochs, 5 cell(s), 2130 images/s; pack 2/6 ends in 1m12s; grid ends in ~6m40s

The grid's part needs to know the packs: kd's default launcher, which runs them one after another in one
process, says so (`start_grid`); a pack on its own (a single run, a SLURM task) shows its own ETA only.
"""
from __future__ import annotations

import logging
import time
from typing import Optional

log = logging.getLogger("kd.training.progress")

EVERY_S = 10.0  # seconds between two progress lines of a pack (its first and last epoch always print one)


class _Grid:
    def __init__(self, packs: int) -> None:
        self.packs, self.done, self.started = packs, 0, time.monotonic()
        self.pack_seconds: list[float] = []
        self.estimated = False


_grid: Optional[_Grid] = None


def start_grid(packs: int) -> None:
    global _grid
    _grid = _Grid(packs)


def pack_done(seconds: float) -> None:
    if _grid is not None:
        _grid.done += 1
        _grid.pack_seconds.append(seconds)


def grid_elapsed() -> Optional[float]:
    return None if _grid is None else time.monotonic() - _grid.started


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class PackProgress:
    """Feed it each epoch's end; it logs when due. `label` is 'teacher' for a teacher's own training."""

    def __init__(self, label: str, cells: int, first_epoch: int, epochs: int) -> None:
        self.label, self.cells, self.first_epoch, self.epochs = label, cells, first_epoch, epochs
        self.started = time.monotonic()
        self.last_line = float("-inf")

    def epoch_done(self, epoch: int, images_per_s: float) -> None:
        now = time.monotonic()
        done = epoch + 1 - self.first_epoch
        per_epoch = (now - self.started) / done
        left = per_epoch * (self.epochs - epoch - 1)
        grid = _grid if self.label == "pack" else None
        if grid is not None and not grid.estimated:  # the first timed epoch of the grid: its total, once
            grid.estimated = True
            log.info("grid: %d pack(s); estimated total ~%s (from its first epoch, %.1fs; teachers not included)",
                     grid.packs, duration(per_epoch * self.epochs * grid.packs), per_epoch)
        if done > 1 and epoch + 1 < self.epochs and now - self.last_line < EVERY_S:
            return
        self.last_line = now
        text = f"progress: {epoch + 1} of {self.epochs} epochs, {self.cells} cell(s), {images_per_s:.0f} images/s; "
        if grid is not None:
            pack_s = per_epoch * self.epochs
            mean_pack = sum(grid.pack_seconds + [pack_s]) / (len(grid.pack_seconds) + 1)
            rest = left + mean_pack * max(0, grid.packs - grid.done - 1)
            text += f"pack {grid.done + 1}/{grid.packs} ends in {duration(left)}; grid ends in ~{duration(rest)}"
        else:
            text += f"{self.label} ends in {duration(left)}"
        log.info(text)
