"""The declared rule that picks the reading of the 3-epoch runs (issue "The authors' reading of the method beside
ours"; README of this folder, "Two readings of the quantizer"). Written before any 1-epoch run of the authors'
reading; `make medium-readings` calls it between the 1-epoch and the 3-epoch sweeps.

    python experiments/results/medium/choose_reading.py <runs.csv or log dirs ...>

Rule: the reading, lsq or authors, in which column/column's mean top-1 at 1 epoch (4-bit ADC, medium recipe,
seeds 0, 1, 2) is the higher; lsq if the two means are equal to 0.01 points. Prints the reading's name. Exits 2,
naming what is missing, unless both readings have all three seeds.
"""

from __future__ import annotations

import sys

from cimexp.report.cli import gather

READINGS = ("lsq", "authors")
SEEDS = {0, 1, 2}


def choose(paths: list[str]) -> tuple[str, dict[str, float]]:
    runs, _, _ = gather(paths)
    cc = runs[
        (runs["kind"] == "train")
        & (runs["scheme"] == "column/column")
        & (runs["epochs"] == 1)
        & (runs["adc_bits"] == 4)
        & (runs["schedule"] == "one_stage")
    ]
    means = {}
    for reading in READINGS:
        rows = cc[cc["quantizer"] == reading].drop_duplicates("seed")
        if set(rows["seed"]) != SEEDS:
            raise LookupError(f"column/column under quantizer={reading}: seeds {sorted(rows['seed'])}, need 0, 1, 2")
        means[reading] = float(rows["acc"].mean())
    best = "authors" if round(means["authors"] - means["lsq"], 2) > 0 else "lsq"
    return best, means


def main(argv: list[str]) -> int:
    try:
        reading, means = choose(argv)
    except (LookupError, FileNotFoundError) as error:
        print(f"choose_reading: {error}", file=sys.stderr)
        return 2
    print(f"column/column at 1 epoch: {means}; reading for 3 epochs: {reading}", file=sys.stderr)
    print(reading)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
