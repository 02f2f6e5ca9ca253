"""An exported model's scoring as an ONNX graph, for serving outside Python (ONNX Runtime): left-padded history
item indices [batch, length] in, scores over all items [batch, items + 1] out (column 0, padding, included),
batch and length dynamic (length up to the model's max_len). It is the fast path's own computation
(FastELLMRec.scores: the instruction's keys and values computed once and stored in the graph, only the read
row through the last layer), traced in fp32 by torch.export and written by torch.onnx.

    python export.py --run_dir out/main/student --output models/student --onnx
    import onnxruntime, numpy as np
    session = onnxruntime.InferenceSession("models/student/model.onnx")
    scores = session.run(None, {"history": np.array([[0, 0, 12, 7, 301]], np.int64)})[0]

The caller keeps what the Python path does around it: histories cut to their last max_len items and
left-padded with 0, items already seen masked out before the top k (slmrec/recommender.py does both).
"""

from pathlib import Path

import torch
from torch import nn

from .export import load_export
from .inference import FastELLMRec, InferenceConfig

ONNX = "model.onnx"


class ScoringGraph(nn.Module):
    def __init__(self, fast: FastELLMRec):
        super().__init__()
        self.fast = fast
        # registered, so their weights and buffers (the Decoder's fused weights, the instruction's keys and
        # values) are the graph's initializers
        self.model, self.decoder = fast.model, fast.forward

    def forward(self, history):
        return self.fast.scores(history)


def write_onnx(folder, opset=18) -> Path:
    """<folder>/model.onnx for a folder of export.py (fp32, whatever the folder's dtype)."""
    folder = Path(folder)
    model = load_export(folder)
    fast = FastELLMRec(model, InferenceConfig(precision="fp32", compile=False, token_block=0), "cpu")
    graph = ScoringGraph(fast).eval()
    max_len = model.cfg.max_len
    example = torch.ones(2, min(4, max_len), dtype=torch.long)
    example[0, :1] = 0  # one padded row, so no shortcut for full rows is traced
    length = torch.export.Dim("length", min=1, max=max_len) if max_len > 1 else 1
    with torch.no_grad():
        program = torch.onnx.export(
            graph,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=["history"],
            output_names=["scores"],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1), 1: length},),
            verbose=False,
        )
    path = folder / ONNX
    program.save(str(path))
    return path
