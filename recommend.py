"""Top-k recommendations from a trained model (E-LLMRec teacher or student, SASRec, GRU4Rec, BERT4Rec).

    python recommend.py --checkpoint out/main/student --data data/ml-100k --user 298
    python recommend.py --checkpoint out/main/student --data data/ml-100k --history 474,465,1,50 --k 5
    python recommend.py --checkpoint out/main/student --data data/ml-100k --input users.jsonl --output recs.jsonl
    python recommend.py --model models/student --history 474,465,1,50      # an exported folder (export.py), alone

Item ids are the dataset's original ids (items.tsv of the prepared dataset), histories oldest first. --user
takes that user's whole stored sequence. --input: JSON lines, each a request as the HTTP API takes it
(serve.py): {"history": [ids...]} with an optional "user" (echoed back; alone, it names a user of the dataset
whose sequence is used), and "k" or "keep_seen" where a line wants other than --k and --keep_seen. --output: JSON lines,
one object per input, {"user"?, "items": [{"item", "title", "score"}, ...]}, written to a temporary file and
renamed; without it, a table on stdout. Everything is checked before anything is scored or written.
"""

import json

from tqdm import tqdm

from slmrec.cli import run
from slmrec.data import PreparedData
from slmrec.errors import DataError, FlagError
from slmrec.files import check_writable, written_whole
from slmrec.flags import coerce, split_flags
from slmrec.inference import InferenceConfig
from slmrec.formats import text_lines
from slmrec.recommender import Recommender, answer_row, model_and_data, read_request
from slmrec.runtime import setup_logging


def read_requests(data: PreparedData, user=None, history=None, input=None, k=10, keep_seen=False) -> list:
    """[Request], every one checked by read_request as the HTTP API checks its own; errors name the flag or the
    input line. --k and --keep_seen are the defaults of lines that do not set their own."""
    given = [x is not None for x in (user, history, input)]
    if sum(given) != 1:
        raise FlagError("give exactly one of --user, --history or --input")
    if user is not None:
        return [read_request(data, {"user": str(user)}, "--user", k, keep_seen)]
    if history is not None:
        return [read_request(data, {"history": coerce("history", history, list)}, "--history", k, keep_seen)]
    requests = []
    for n, line in text_lines(input):
        if not line.strip():
            continue
        where = f"{input} line {n}"
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as e:
            raise DataError(f"{where}: not JSON ({getattr(e, 'msg', 'nested too deeply')})") from None
        requests.append(read_request(data, obj, where, k, keep_seen))
    if not requests:
        raise DataError(f"{input}: no histories in the file")
    return requests


def write_jsonl(rows, path):
    """All rows, renamed into place at the end (files.written_whole): no half-written output."""
    with written_whole(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def main(
    checkpoint: str = None,
    data: str = None,
    model: str = None,
    user: str = None,
    history: str = None,
    input: str = None,
    k: int = 10,
    keep_seen: bool = False,
    output: str = None,
    **flags,
):
    """checkpoint: a training run's folder, with --data its prepared dataset; or model: a folder of export.py,
    alone (--data only where requests name users). Other flags are InferenceConfig's (slmrec/inference.py):
    --precision, --fast, --int8, --batch_size."""
    setup_logging()
    cfg = InferenceConfig(**split_flags(flags, InferenceConfig)[0])
    source, dataset = model_and_data(checkpoint, model, data)
    if output:
        check_writable(output, "--output", reads=[p for p in (source, data, input) if p])
    requests = read_requests(dataset, user, history, input, k, keep_seen)
    rec = Recommender.from_checkpoint(source, dataset, cfg)
    with tqdm(total=len(requests), desc="recommending", unit="history", disable=len(requests) < 2) as bar:
        top = rec.answer(requests, progress=bar.update)
    rows = [answer_row(dataset, r, items) for r, items in zip(requests, top)]
    if output:
        write_jsonl(rows, output)
        print(f"wrote {len(rows)} recommendation lists to {output}")
        return
    for n, row in enumerate(rows, 1):
        print(f"\n# {'user ' + row['user'] if 'user' in row else f'history {n}'}")
        print(f"{'rank':>4}  {'item':>10}  {'score':>9}  title")
        for rank, it in enumerate(row["items"], 1):
            print(f"{rank:>4}  {it['item']:>10}  {it['score']:>9.4f}  {it['title']}")


if __name__ == "__main__":
    run(main, configs=(InferenceConfig,))
