"""A command line as Hydra reads it, by Hydra's own parser: which words are its flags (and their values, such as
`--info config` or `-cd DIR`) and which are overrides that kd may check before Hydra composes anything. A list of
flags kept here would miss Hydra's next one and read its value as an override (`-sc install=bash`)."""
from __future__ import annotations

import argparse
import contextlib
import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional


@dataclass
class HydraArgs:
    """Hydra's flags with their values, in the order typed, and the overrides; `parsed` is None where Hydra will
    refuse the line or exit on its own (--version), and kd then leaves the whole line to Hydra."""

    flags: list[str]
    overrides: list[str]
    parsed: Optional[argparse.Namespace] = field(default=None, repr=False)

    def runs_a_job(self) -> bool:
        """False for the flags that only show something (--help, --cfg, --info, --shell-completion, ...)."""
        p = self.parsed
        return p is not None and not (p.help or p.hydra_help or p.cfg or p.info or p.shell_completion)

    def overrides_to_check(self) -> list[str]:
        """The overrides that are config overrides: shell completion's words (`install=bash`) are its commands."""
        return [] if self.parsed is None or self.parsed.shell_completion else self.overrides

    def config_dirs(self) -> list[Path]:
        """The --config-dir/-cd dir, whose groups and options count as kd's own."""
        return [Path(self.parsed.config_dir)] if self.parsed is not None and self.parsed.config_dir else []


def split_args(argv: list[str]) -> HydraArgs:
    """Split `argv` as `python kd/train.py <argv>` will: Hydra's flags (passed on as typed) and the overrides."""
    from hydra._internal.utils import get_args_parser

    try:  # argparse prints its error (or Hydra's version) and exits; Hydra will do so itself, once
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            parsed = get_args_parser().parse_args(argv)
    except SystemExit:
        return HydraArgs(flags=list(argv), overrides=[])
    left = Counter(parsed.overrides)  # positionals: the words argparse did not take as a flag or its value
    flags, overrides = [], []
    for arg in argv:
        if left[arg] > 0 and not arg.startswith("-"):
            left[arg] -= 1
            overrides.append(arg)
        else:
            flags.append(arg)
    return HydraArgs(flags, overrides, parsed)
