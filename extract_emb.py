"""Write a trained SASRec's (or GRU4Rec's, BERT4Rec's) item-embedding table as the pipeline's pickle:
{"item_embedding": FloatTensor[num_items + 1, d]}, row 0 = padding.

    python extract_emb.py --checkpoint out/sasrec --output out/sasrec/item_embedding.pkl
"""

from pathlib import Path

from slmrec.cli import run
from slmrec.embeddings import DEFAULT_SASREC, save_item_embedding
from slmrec.seqrec import load_seqrec
from slmrec.files import check_writable


def main(checkpoint: str = DEFAULT_SASREC, output: str = None):
    """With no flags: the main job's SASRec (out/main/sasrec), its table beside it (item_embedding.pkl)."""
    output = output or str(Path(checkpoint) / "item_embedding.pkl")
    check_writable(output, "--output", reads=[checkpoint])
    model = load_seqrec(checkpoint)
    table = model.item_table().detach()
    save_item_embedding(table, output, model.cfg.data_fingerprint)
    print(f"wrote {output}: item_embedding {tuple(table.shape)} (dataset {model.cfg.data_fingerprint})")


if __name__ == "__main__":
    run(main)
