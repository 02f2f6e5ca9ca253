"""Serve a trained model over HTTP (FastAPI on uvicorn), concurrent requests batched into one forward pass.

    python serve.py --checkpoint out/main/student --data data/ml-100k              # http://127.0.0.1:8000/docs
    curl -s localhost:8000/recommend -H 'content-type: application/json' -d '{"history": ["474", "465"], "k": 5}'

POST /recommend takes {"history": [item ids], "k": 10, "keep_seen": false}, {"user": "298"}, or a list of them,
and answers what recommend.py prints for the same input; GET /health (liveness), GET /ready (model loaded and
warmed up), /docs (OpenAPI). Several processes, one model each, behind one port: README, "Serving".
"""

import uvicorn

from slmrec.cli import run
from slmrec.data import PreparedData
from slmrec.inference import InferenceConfig, Recommender
from slmrec.serving import ServeConfig, create_app
from slmrec.utils import setup_logging, split_flags


def main(checkpoint: str, data: str, **flags):
    """Other flags are ServeConfig's (slmrec/serving.py: --host, --port, --max_batch, --max_wait_ms, ...) and
    InferenceConfig's (slmrec/inference.py: --precision, --int8, ...)."""
    setup_logging()
    sflags, iflags = split_flags(flags, ServeConfig, InferenceConfig)
    cfg = ServeConfig(**sflags)
    recommender = Recommender.from_checkpoint(checkpoint, PreparedData(data), InferenceConfig(**iflags))
    # One process, one model: a request never waits on another process's model (README, "Serving").
    uvicorn.run(create_app(recommender, cfg), host=cfg.host, port=cfg.port, log_level="info",
                timeout_graceful_shutdown=30)


if __name__ == "__main__":
    run(main, configs=(ServeConfig, InferenceConfig))
