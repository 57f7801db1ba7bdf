"""The paper's best model (Hosu et al. 2019, Table 3, Pool-3FC (*)): wide MLSP features from
InceptionResNet-v2 with 8 stored augmentations -> Pool-3FC head -> test on 8-augmentation means.

`python scripts/train_pool3fc.py` with no arguments runs the whole thing on the bundled demo set:
builds it, extracts wide features, trains, tests, prints the metrics table next to the paper's
numbers and writes a predicted-vs-true scatter plot. `--ava_root=/path/to/AVA` does the real run.
All flags of scripts/train_mlsp.py apply (see --help).
"""
import sys

from absl import app

import train_mlsp


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    train_mlsp.run(head="pool3fc", features="wide")


if __name__ == "__main__":
    from ku import absl_app  # absl.app.run, exit 0 after --help

    absl_app.run(main)
