"""Serve a trained model over HTTP (FastAPI on uvicorn), concurrent requests batched into one forward pass.

    python serve.py --checkpoint out/main/student --data data/ml-100k              # http://127.0.0.1:8000/docs
    python serve.py --model models/student                                         # an exported folder, alone
    curl -s localhost:8000/recommend -H 'content-type: application/json' -d '{"history": ["474", "465"], "k": 5}'

POST /recommend takes {"history": [item ids], "k": 10, "keep_seen": false}, {"user": "298"}, or a list of them,
and answers what recommend.py prints for the same input; GET /health (liveness), GET /ready (model loaded and
warmed up), /docs (OpenAPI). --workers N: N processes, one model each, behind one port.
"""

import json
import os

import uvicorn

from slmrec.cli import run
from slmrec.inference import InferenceConfig
from slmrec.recommender import Recommender, check_model, model_and_data
from slmrec.serving import ServeConfig, configs, create_app
from slmrec.runtime import setup_logging


def main(checkpoint: str = None, data: str = None, model: str = None, **flags):
    """checkpoint: a training run's folder, with --data its prepared dataset; or model: a folder of export.py,
    alone (--data only for {"user": ...} requests). Other flags are ServeConfig's (slmrec/serving.py: --host,
    --port, --max_batch, --max_wait_ms, --workers,
    ...) and InferenceConfig's (slmrec/inference.py: --precision, --int8, --compile (default true here), ...)."""
    setup_logging()
    cfg, icfg = configs(flags)  # every flag checked here, before any worker starts
    source, dataset = model_and_data(checkpoint, model, data)  # a bad dataset is one line here, not one per worker
    run_args = dict(host=cfg.host, port=cfg.port, log_level="info", timeout_graceful_shutdown=30)
    if cfg.workers > 1:
        check_model(source, dataset)  # a bad checkpoint: one line here, not a worker restarted forever
        # uvicorn's process manager starts the workers; each builds the app with these flags (app_from_env).
        os.environ.update(SLMREC_CHECKPOINT=str(source), SLMREC_DATA=str(data or ""), SLMREC_FLAGS=json.dumps(flags))
        uvicorn.run("slmrec.serving:app_from_env", factory=True, workers=cfg.workers, **run_args)
        return
    recommender = Recommender.from_checkpoint(source, dataset, icfg)
    uvicorn.run(create_app(recommender, cfg), **run_args)


if __name__ == "__main__":
    run(main, configs=(ServeConfig, InferenceConfig))
