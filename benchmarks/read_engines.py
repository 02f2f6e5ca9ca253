"""The first step of preparation (read an Amazon ratings CSV, keep ratings > 3, each (user, item) pair once at
its earliest time) by the project's two readers (slmrec/raw.py: the line reader, and slmrec/columnar.py, the one that
prepare_data.py uses, on Polars) and by Polars and DuckDB alone, each in a fresh process with its time and peak
RSS; the pair counts must agree.

    python benchmarks/read_engines.py /tmp/scale/ratings-1.csv     # a file from benchmarks/scale.py

DuckDB is not a dependency of the project: install it to compare (pip install duckdb); an engine that is not
installed is skipped.
"""

import json
import subprocess
import sys
import time

from slmrec.cli import run
from slmrec.machine import peak_rss_mb

ENGINES = ("lines", "columnar", "polars", "duckdb")  # the project's two readers, then each engine alone


def child(engine, path):
    t = time.perf_counter()
    if engine == "polars":
        import polars as pl

        frame = (
            pl.scan_csv(
                path,
                has_header=False,
                new_columns=["item", "user", "rating", "time"],
                schema_overrides={"item": pl.String, "user": pl.String, "rating": pl.Float64, "time": pl.Int64},
            )
            .with_row_index("line")
            .filter(pl.col("rating") > 3)
            .sort(["user", "item", "time", "line"])
            .unique(["user", "item"], keep="first", maintain_order=True)
            .select("user", "item", "time", "line")
            .collect(engine="streaming")
        )
        pairs = len(frame)
    elif engine == "duckdb":
        import duckdb

        con = duckdb.connect()
        frame = con.execute(f"""SELECT user, item, min(time) AS time FROM read_csv('{path}', header=false,
            columns={{'item': 'VARCHAR', 'user': 'VARCHAR', 'rating': 'DOUBLE', 'time': 'BIGINT'}})
            WHERE rating > 3 GROUP BY user, item""").fetchnumpy()  # the pairs in memory, as the others hold them
        pairs = len(frame["time"])
    else:
        from slmrec.splits import dedupe_earliest
        from slmrec.raw import read_interactions

        raw = read_interactions(path, "amazon-csv", reader=engine)
        pairs = len(dedupe_earliest(raw.user, raw.item, raw.line, raw.time))
    print(json.dumps({"seconds": time.perf_counter() - t, "pairs": int(pairs), "peak_rss_mb": peak_rss_mb()}))


def main(path: str):
    from slmrec.machine import hardware

    print(f"{path}, {hardware()}")
    print("| engine | seconds | peak RSS MB | pairs |")
    print("|---|---|---|---|")
    for engine in ENGINES:
        res = subprocess.run([sys.executable, __file__, "child", engine, path], capture_output=True, text=True)
        if res.returncode != 0:
            print(f"| {engine} | - | - | skipped: {res.stderr.strip().splitlines()[-1][:80]} |")
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"| {engine} | {r['seconds']:.1f} | {r['peak_rss_mb']:,.0f} | {r['pairs']:,} |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        child(sys.argv[2], sys.argv[3])
    else:
        run(main)
