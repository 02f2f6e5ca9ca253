"""Export a trained E-LLMRec run (the student, or a teacher) as one self-contained folder: the kept decoder
layers with LoRA folded in, the prompt's token embeddings, the heads and the item table in safetensors, the item
ids and titles, config.json and a README.md model card (slmrec/export.py says what is in it and why).

    python export.py --run_dir out/main/student --output models/student              # fp32
    python export.py --run_dir out/main/student --output models/student-bf16 --dtype bf16
    python export.py --run_dir out/main/student --output models/student --onnx   # also model.onnx (ONNX Runtime)
    python recommend.py --model models/student --history 474,465 --k 5            # no base LM, no dataset
"""

from slmrec.cli import run
from slmrec.export import export, folder_mb
from slmrec.runtime import setup_logging


def main(
    run_dir: str = "out/main/student", output: str = None, dtype: str = "fp32", data: str = None, onnx: bool = False
):
    """run_dir: the run folder (finetune.py or distill.py); output: a new or empty folder (default: <run_dir>-export);
    dtype: fp32 or bf16; data: the prepared dataset it was trained on (default: the one the run names); onnx: also
    write model.onnx, the scoring graph for ONNX Runtime (fp32; slmrec/onnx_graph.py)."""
    setup_logging()
    output = output or f"{run_dir.rstrip('/')}-export"
    config = export(run_dir, output, dtype, data)
    if onnx:
        from slmrec.onnx_graph import write_onnx

        write_onnx(output)
    print(
        f"wrote {output}: {folder_mb(output):.1f} MB ({config['model']['num_layers']} layers of "
        f"{config['cut_from']['base_model']}, {config['model']['num_items']:,} items, {dtype})"
    )


if __name__ == "__main__":
    run(main)
