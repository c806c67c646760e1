"""Regenerates the embedded default dataset (byte-identical for the same seed).

    python Data/generate.py [--output_dir Data/synthetic] [--seed 2026]

The generative model and every knob live in ``peterrec/data/synthetic.py``;
see ``Data/README.md``.
"""

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from peterrec.data import synthetic  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default=str(REPO / "Data" / "synthetic"))
    parser.add_argument("--seed", type=int, default=synthetic.DEFAULT_SEED)
    args = parser.parse_args(argv)
    stats = synthetic.generate(args.output_dir, seed=args.seed)
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()
