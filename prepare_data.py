"""Prepare a dataset by the paper's protocol (§5.1; README "Data preparation").

    python prepare_data.py --source ml-100k --output_dir data/ml-100k
    python prepare_data.py --source Clothing.csv --output_dir data/cloth --metadata meta_Clothing.json.gz
"""

import json

from slmrec.data import PrepareConfig, prepare
from slmrec.cli import run
from slmrec.utils import setup_logging, split_flags


def main(source: str, output_dir: str, overwrite: bool = False, **flags):
    """SOURCE is `ml-100k` (fetched from the recbole wheel) or a ratings file:
    Amazon 2018 CSV or review JSON lines (.gz ok), MovieLens u.data / ratings.dat, RecBole .inter.
    OUTPUT_DIR must be new or empty; an existing prepared dataset is replaced only with --overwrite. Other
    flags are PrepareConfig's fields (slmrec/data.py): --format, --metadata, --rating_threshold, --k_core,
    --num_negatives, --seed."""
    setup_logging()
    cfg = PrepareConfig(source, **split_flags(flags, PrepareConfig, fixed=("source",))[0])
    stats = prepare(cfg, output_dir, overwrite)
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    run(main, configs=(PrepareConfig,))
