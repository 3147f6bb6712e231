"""Export a float run's network as the half-precision state_dict its post-training table is computed from
(`make networks` calls it between a network's float training and its table; README of this folder).

    python experiments/results/networks/export_float.py <run directory or .ckpt> <out.pt>

The run directory's checkpoints/last.ckpt is the final epoch's (not the best one: the test split is also the
validation split). Floating-point tensors are stored in half precision, half the size of the file; every number of
the table, the float network's row included, is measured on the stored weights.
"""

from __future__ import annotations

import sys
from pathlib import Path

from cimexp.models.swap import save_float_weights
from cimexp.results import file_sha256


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[3].strip(), file=sys.stderr)
        return 2
    source, target = Path(argv[0]), Path(argv[1])
    if source.is_dir():
        source = source / "checkpoints" / "last.ckpt"
    if not source.is_file():
        print(f"export_float: no checkpoint at {str(source)!r} (train the network first)", file=sys.stderr)
        return 2
    count = save_float_weights(source, target)
    print(f"{target}: {count} tensors, {target.stat().st_size / 2**20:.1f} MiB, sha256 {file_sha256(target)[:12]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
