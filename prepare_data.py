"""Prepare a dataset by the paper's protocol (§5.1; docs/data.md).

python prepare_data.py --source ml-100k --output_dir data/ml-100k
python prepare_data.py --source Clothing.csv --output_dir data/cloth --metadata meta_Clothing.json.gz
python prepare_data.py --source Clothing_Shoes_and_Jewelry.jsonl --output_dir data/cloth23   # Amazon 2023 reviews
python prepare_data.py --split given --source 5core/last_out_w_his --output_dir data/beauty23  # a published split
python prepare_data.py --split given --train a.train.csv --valid a.valid.csv --test a.test.csv --output_dir data/a
python prepare_data.py --convert data/cloth      # a dataset of the .npz format, rewritten memory-mapped
python prepare_data.py --verify data/cloth       # every array against the fingerprint in stats.json
"""

import json

from slmrec.cli import run
from slmrec.data import PreparedData
from slmrec.prepare import PrepareConfig, convert as convert_dataset, prepare
from slmrec.errors import FlagError
from slmrec.flags import split_flags
from slmrec.runtime import setup_logging


def main(
    source: str = None,
    output_dir: str = None,
    overwrite: bool = False,
    convert: str = None,
    verify: str = None,
    **flags,
):
    """SOURCE is `ml-100k` (fetched from the recbole wheel) or a ratings file: Amazon 2018 CSV or review JSON
    lines (.gz ok), Amazon 2023 review JSON lines or benchmark CSV, MovieLens u.data / ratings.dat, RecBole .inter.
    With --split given, SOURCE is a folder holding one <name>.train/.valid/.test set (or name the three files
    with --train, --valid, --test): its rows are kept as they are (no rating filter or k-core unless asked).
    OUTPUT_DIR must be new or empty; an existing prepared dataset is replaced only with --overwrite. Other
    flags are PrepareConfig's fields (slmrec/prepare.py): --format, --metadata, --rating_threshold, --k_core,
    --num_negatives, --seed, --item_key (Amazon 2023: parent_asin, or asin), --split, --reader (columnar: Polars
    wherever it reads the file exactly as the line reader does, the line reader elsewhere; lines: the line reader
    only). --convert DIR rewrites a dataset prepared in
    the .npz format (format 1) as memory-mapped .npy files, same fingerprint; --verify DIR reads every array of
    DIR against its fingerprint."""
    setup_logging()
    if convert or verify:
        if source or output_dir or flags:
            raise FlagError("--convert and --verify take a prepared dataset's folder and no other flag")
        if convert:
            stats = convert_dataset(convert)
        else:
            PreparedData(verify).verify()
            print(f"{verify}: every array matches the fingerprint in stats.json")
            return
    else:
        if not (source or flags.get("train")) or not output_dir:
            raise FlagError("--source and --output_dir are required (or --convert DIR / --verify DIR)")
        cfg = PrepareConfig(source or "", **split_flags(flags, PrepareConfig, fixed=("source",))[0])
        stats = prepare(cfg, output_dir, overwrite)
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    run(main, configs=(PrepareConfig,))
