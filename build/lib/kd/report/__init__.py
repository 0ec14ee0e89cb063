"""The report of a sweep: Table 1 with intervals (table, stats), the paper's claims checked (claims),
figures, and a W&B Report; `kd-report` (cli) writes them all."""
