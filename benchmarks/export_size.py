"""What shipping the student takes, before and after export.py: the folders' sizes, and serve.py's start to
/ready from the run folder (with the prepared dataset and the base LM from the project cache) against the
exported folder alone; then a LLaMA-7B-shaped 4-layer student (random weights) exported, against the base it
would be cut from.

    python benchmarks/export_size.py --run out/main/student --data data/ml-100k

Sizes are bytes on disk of every file in the folder (MB = 1e6 bytes). The base LM is counted as this project
keeps it: the converted model folder in the project cache (SmolLM2: fp32 safetensors) for the embedded
default. /ready: seconds from starting serve.py (a fresh process, compiled scoring path where a compiler is
there) until GET /ready answers 200, the median of `repeats` starts.
"""

import statistics
import tempfile
import time
from pathlib import Path

import torch

from serve_load import free_port, start_server
from slmrec.backbone import gguf_as_directory, load_backbone, smollm2_path
from slmrec.checkpoints import read_model_config, save_model
from slmrec.cli import run
from slmrec.export import export, folder_mb
from slmrec.machine import hardware, peak_rss_mb
from slmrec.model import ELLMRec, ELLMRecConfig
from slmrec.prepare import DEFAULT_DATA

ROOT = Path(__file__).resolve().parents[1]


def tree_mb(path) -> float:
    path = Path(path)
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6 if path.is_dir() else 0.0


def run_mb(run_dir) -> float:
    """What a run folder holds that scoring reads (not its checkpoints, logs or teacher-state caches)."""
    keep = ("model.safetensors", "slmrec_config.json")
    return sum((Path(run_dir) / f).stat().st_size for f in keep) / 1e6


def ready_seconds(args, repeats) -> float:
    times = []
    for _ in range(repeats):
        server, seconds = start_server(args, free_port())
        server.terminate()
        server.wait()
        times.append(seconds)
    return statistics.median(times)


def agreement(run_dir, folders, data):
    """Every test user's top 10 and scores from the run folder and from each export, fp32 and bf16 scoring."""
    from slmrec.data import PreparedData
    from slmrec.inference import InferenceConfig
    from slmrec.recommender import Recommender

    dataset = PreparedData(data)
    histories = [dataset.history(u, "test").tolist() for u in range(dataset.num_users)]
    print(
        "| scored from | precision | test users with the run's top 10 | largest score difference |\n|---|---|---|---|"
    )
    for precision in ("fp32", "bf16"):
        cfg = InferenceConfig(precision=precision, compile=False)
        want = Recommender.from_checkpoint(run_dir, dataset, cfg).recommend(histories, k=10)
        for dtype, folder in folders.items():
            got = Recommender.from_pretrained(folder, cfg=cfg).recommend(histories, k=10)
            same = sum([i for i, _ in a] == [i for i, _ in b] for a, b in zip(got, want))
            diff = max(abs(x - y) for a, b in zip(got, want) for (_, x), (_, y) in zip(a, b))
            print(f"| export, {dtype} weights | {precision} | {same} of {len(histories)} | {diff:.2e} |")
    print()


def main(run_dir: str = "out/main/student", data: str = DEFAULT_DATA, repeats: int = 3, llama: bool = True):
    print(f"{hardware()}, torch {torch.__version__}\n")
    base = read_model_config(run_dir)["base_model"]
    base_dir = gguf_as_directory(smollm2_path()) if base == "smollm2-135m" else Path(base)
    with tempfile.TemporaryDirectory() as tmp:
        folders = {d: Path(tmp) / d for d in ("fp32", "bf16")}
        for dtype, folder in folders.items():
            export(run_dir, folder, dtype, data)
        agreement(run_dir, folders, data)
        today = run_mb(run_dir) + tree_mb(data) + tree_mb(base_dir)
        print("| what ships | MB |\n|---|---|")
        print(f"| the run folder's model ({run_dir}) | {run_mb(run_dir):.1f} |")
        print(f"| the prepared dataset ({data}) | {tree_mb(data):.1f} |")
        print(f"| the base LM ({base}, as the project cache holds it) | {tree_mb(base_dir):.1f} |")
        print(f"| **today: the three together** | **{today:.1f}** |")
        for dtype, folder in folders.items():
            print(f"| **export.py --dtype {dtype}** (everything scoring needs) | **{folder_mb(folder):.1f}** |")
        print()
        print("| serve.py from | seconds to /ready (median of %d starts) |\n|---|---|" % repeats)
        from_run = ready_seconds(["--checkpoint", run_dir, "--data", data], repeats)
        print(f"| --checkpoint {run_dir} --data {data} | {from_run:.1f} |")
        for dtype, folder in folders.items():
            print(f"| --model (the {dtype} export) | {ready_seconds(['--model', str(folder)], repeats):.1f} |")
    if not llama:
        return
    # A 4-layer student cut from LLaMA-7B's shape (random weights): what the paper's student would ship.
    with tempfile.TemporaryDirectory() as tmp:
        from slmrec.data import PreparedData

        dataset = PreparedData(data)
        lm, tok = load_backbone("random:llama-7b", 4, dtype="bf16")
        table = torch.randn(dataset.num_items + 1, 64)
        cfg = ELLMRecConfig(base_model="random:llama-7b", num_layers=4, data_fingerprint=dataset.fingerprint)
        model = ELLMRec(cfg, table, backbone=(lm, tok))
        save_model(model, Path(tmp) / "run")
        full = lm.config.num_hidden_layers  # the cut config
        per_layer = sum(p.numel() for n, p in lm.layers[0].named_parameters() if "lora_" not in n)
        vocab, hidden = lm.get_input_embeddings().weight.shape
        del model, lm  # export.py loads the run again
        t = time.perf_counter()
        export(Path(tmp) / "run", Path(tmp) / "export", "bf16", data)
        seconds = time.perf_counter() - t
        base_bytes = (32 * per_layer + 2 * vocab * hidden + hidden) * 2  # LLaMA-7B: 32 layers, tokens in and out
        print("\n| LLaMA-7B shape, bf16 | MB |\n|---|---|")
        print(f"| the base (32 layers, the token table and LM head), bf16 | {base_bytes / 1e6:,.0f} |")
        print(
            f"| export.py of a {full}-layer student (bf16; written in {seconds:.0f} s) | "
            f"{folder_mb(Path(tmp) / 'export'):,.0f} |"
        )
        print(f"\npeak RSS {peak_rss_mb():,.0f} MB")


if __name__ == "__main__":
    run(main)
