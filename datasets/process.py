"""Prepare a dataset by the paper's protocol (SPEC §4).

    python datasets/process.py --source ml-100k --output_dir data/ml-100k
    python datasets/process.py --source Clothing.csv --output_dir data/cloth --metadata meta_Clothing.json.gz
"""

import json

import fire

from slmrec.data import PrepareConfig, prepare
from slmrec.utils import setup_logging


def main(source: str, output_dir: str, format: str = None, metadata: str = None, rating_threshold: float = 3.0,
         k_core: int = 5, num_negatives: int = 999, seed: int = 42):
    """SOURCE is `ml-100k` (fetched from the recbole wheel) or a ratings file:
    Amazon 2018 CSV or review JSON lines (.gz ok), MovieLens u.data / ratings.dat, RecBole .inter."""
    setup_logging()
    stats = prepare(PrepareConfig(source, format, metadata, rating_threshold, k_core, num_negatives, seed), output_dir)
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    fire.Fire(main)
