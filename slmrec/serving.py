"""A trained model behind HTTP: FastAPI on uvicorn, with dynamic micro-batching.

FastAPI (on Starlette, served by uvicorn) for its request models, which give validation and an OpenAPI page
(/docs) from one declaration, and because uvicorn's worker model and graceful shutdown are what a deployment
already knows. Concurrent requests wait in one queue; a background task takes the first, then the requests still
being read and checked as they come (for max_wait_ms at most), up to max_batch, and scores them in one forward
pass on the fast path in one worker thread, so requests never race on the model and the event loop never blocks
on it.
"""

import asyncio
import json
import os
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi import Request as HTTPRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StrictBool, StrictInt, StrictStr

from .errors import DataError, FlagError
from .flags import split_flags
from .inference import InferenceConfig
from .machine import can_compile, compute_device
from .export import is_export
from .recommender import Recommender, Request, UnknownUser, answer_row, model_and_data, read_request

log = logging.getLogger(__name__)


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 64  # histories scored in one forward pass at most
    max_wait_ms: float = 5.0  # how long the first request of a batch waits at most for others being read to join
    max_body_bytes: int = 1_000_000  # a larger request body is refused (413)
    max_list: int = 256  # histories in one call at most
    max_history: int = 10_000  # items in one history at most (the model reads the last max_len of them)
    workers: int = 1  # processes, one model each, behind one port (uvicorn's process manager)
    # torch's threads per process for scoring (0: torch's default, one per core); workers x threads should not
    # exceed the cores, and the event loop needs some CPU too (benchmarks/serve_load.py)
    threads: int = 0

    def __post_init__(self):  # flags are checked when the config is made, before any work
        if (
            min(self.max_batch, self.max_body_bytes, self.max_list, self.workers) < 1
            or min(self.max_wait_ms, self.threads) < 0
        ):
            raise FlagError(
                "--max_batch, --max_body_bytes, --max_list and --workers must be at least 1, --max_wait_ms "
                "and --threads at least 0"
            )


class RecRequest(BaseModel):
    """A history of original item ids (oldest first), or a dataset user whose whole sequence is the history."""

    # Strict: JSON true is not the item, the user or the k numbered 1; read_request checks the same for --input.
    history: list[StrictStr | StrictInt] | None = Field(None, description="original item ids, oldest first")
    user: StrictStr | StrictInt | None = Field(
        None, description="a dataset user (users.tsv); echoed back with a history"
    )
    k: StrictInt = Field(10, description="how many items to recommend")
    keep_seen: StrictBool = Field(False, description="keep items already in the history")


class BadRequest(ValueError):
    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


class MicroBatcher:
    """Groups concurrent jobs: fn(list of jobs) -> list of results runs in one worker thread, one batch at a time.
    `sizes` records each batch's size."""

    def __init__(self, fn, max_batch, max_wait_s):
        self.fn, self.max_batch, self.max_wait_s = fn, max_batch, max_wait_s
        self.queue = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.sizes = []
        self.task = None
        self.busy = False  # a batch is being scored
        # requests that have come in and are still being read and checked (counted by the app's Arrivals
        # middleware): a batch waits for them up to max_wait_s, and no longer once none is on its way
        self.arriving = 0

    def arrived(self, scope):
        """The request of this ASGI scope is no longer on its way (its endpoint runs, or it was refused)."""
        if scope.pop("slmrec.arriving", False):
            self.arriving -= 1

    async def submit(self, job):
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((job, future))
        return await future

    async def _next_batch(self):
        batch = [await self.queue.get()]
        self.busy = True  # from the first job taken: drain() waits for it
        deadline = asyncio.get_running_loop().time() + self.max_wait_s
        while len(batch) < self.max_batch and (self.arriving or not self.queue.empty()):
            left = deadline - asyncio.get_running_loop().time()
            try:
                batch.append(self.queue.get_nowait() if left <= 0 else await asyncio.wait_for(self.queue.get(), left))
            except (asyncio.QueueEmpty, asyncio.TimeoutError):
                break
        return batch

    async def run(self):
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            try:
                results = await loop.run_in_executor(self.executor, self.fn, [job for job, _ in batch])
            except Exception as e:  # noqa: BLE001 - reported to each waiting request as a 500, and the loop goes on
                log.exception("scoring a batch of %d failed", len(batch))
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            finally:
                self.busy = False
            self.sizes.append(len(batch))
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)

    async def drain(self, timeout=30.0):
        """Wait until every queued job and the batch in flight are scored (graceful shutdown), then stop."""
        t = time.monotonic()
        while (self.busy or not self.queue.empty()) and time.monotonic() - t < timeout:
            await asyncio.sleep(0.01)
        if self.task:
            self.task.cancel()
        self.executor.shutdown(wait=True)


class Arrivals:
    """Counts the requests to `path` in `batcher.arriving` from when they come in until their endpoint runs
    (or they are refused before it), so that a batch waits for requests being read and checked, not for a
    timer: a fixed wait would leave the model idle max_wait_ms a batch after every client's request had come."""

    def __init__(self, app, batcher, path):
        self.app, self.batcher, self.path = app, batcher, path

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != self.path:
            return await self.app(scope, receive, send)
        self.batcher.arriving += 1
        scope["slmrec.arriving"] = True
        try:
            await self.app(scope, receive, send)
        finally:
            self.batcher.arrived(scope)


class BodyLimit:
    """Refuses a request body over max_bytes with a 413 before the endpoint reads it: by its content-length, or,
    without one (chunked), counted while it arrives and then replayed to the endpoint. A plain ASGI middleware:
    Starlette's @app.middleware("http") runs every response through an extra task and stream, a fifth of the
    event loop's time per request under load (py-spy, benchmarks/README.md "Serving under load")."""

    def __init__(self, app, max_bytes):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        size = dict(scope["headers"]).get(b"content-length")
        if size is not None and (not size.isdigit() or int(size) > self.max_bytes):
            return await self.refuse(scope, receive, send)
        if size is None and scope["method"] == "POST":
            body, more = bytearray(), True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > self.max_bytes:
                    return await self.refuse(scope, receive, send)
            replayed = False

            async def replay():
                nonlocal replayed
                if replayed:
                    return await receive()
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}

            return await self.app(scope, replay, send)
        await self.app(scope, receive, send)

    async def refuse(self, scope, receive, send):
        await _error(413, f"request body over {self.max_bytes} bytes")(scope, receive, send)


def create_app(recommender, cfg: ServeConfig = None) -> FastAPI:
    """The HTTP app over a loaded slmrec.inference.Recommender."""
    cfg = cfg or ServeConfig()
    data = recommender.data
    state = {"ready": False}

    batcher = MicroBatcher(recommender.answer, cfg.max_batch, cfg.max_wait_ms / 1000)

    @asynccontextmanager
    async def lifespan(app):
        batcher.task = asyncio.create_task(batcher.run())
        data.item_index  # the id maps are built before /ready, not by the first request
        if hasattr(data, "users"):  # a prepared dataset (an exported model alone has no users)
            data.user_index
        await batcher.submit(Request([1], k=1, keep_seen=True))  # warm-up: the first forward pass allocates
        state["ready"] = True
        log.info("ready: %s items, batches of up to %d within %.1f ms", data.num_items, cfg.max_batch, cfg.max_wait_ms)
        yield
        state["ready"] = False
        await batcher.drain()

    app = FastAPI(
        title="SLMRec recommender",
        lifespan=lifespan,
        description="Top-k next items for item histories from a trained SLMRec/E-LLMRec or SeqRec model.",
    )
    app.state.batcher, app.state.config = batcher, cfg

    app.add_middleware(BodyLimit, max_bytes=cfg.max_body_bytes)
    app.add_middleware(Arrivals, batcher=batcher, path="/recommend")

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc):
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":
            return _error(400, f"malformed JSON: {first.get('ctx', {}).get('error', first.get('msg', ''))}")
        # The field and list index only: pydantic's location also names the body's union branch and type tags.
        where = ".".join(str(x) for x in first.get("loc", ()) if isinstance(x, int) or x in RecRequest.model_fields)
        return _error(422, f"{where or 'body'}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(BadRequest)
    async def bad(request, exc):
        return _error(exc.status, str(exc))

    @app.exception_handler(Exception)
    async def internal(request, exc):
        log.error("internal error on %s: %r", request.url.path, exc)
        return _error(500, "internal error (logged on the server)")

    @app.get("/health", summary="liveness: the process answers")
    async def health():
        return {"status": "ok"}

    @app.get("/ready", summary="readiness: the model is loaded and warmed up")
    async def ready():
        if not state["ready"]:
            return _error(503, "not ready")
        return {"ready": True, "items": data.num_items, "max_batch": cfg.max_batch}

    @app.post("/recommend", summary="top-k items for one request or a list of them")
    async def recommend(body: RecRequest | list[RecRequest], request: HTTPRequest):
        batcher.arrived(request.scope)
        many = isinstance(body, list)
        requests = body if many else [body]
        if not requests or len(requests) > cfg.max_list:
            raise BadRequest(f"a list of 1..{cfg.max_list} requests is needed, not {len(requests)}")
        jobs = [_job(r, i if many else None, data, cfg) for i, r in enumerate(requests)]
        results = await asyncio.gather(*(batcher.submit(job) for job in jobs))
        rows = [answer_row(data, job, top) for job, top in zip(jobs, results)]
        return JSONResponse(rows if many else rows[0])  # plain JSON already: FastAPI's encoder would walk it again

    return app


def _job(r: RecRequest, i, data, cfg) -> Request:
    """One request read and checked as recommend.py reads its --input lines: 400 naming what is wrong, 404 for a
    user not in the dataset."""
    where = f"request {i}" if i is not None else "request"
    try:
        return read_request(data, r.model_dump(), where, max_history=cfg.max_history)
    except UnknownUser as e:
        raise BadRequest(str(e), 404) from None
    except DataError as e:
        raise BadRequest(str(e)) from None


def _error(status, message):
    return JSONResponse({"error": message}, status_code=status)


def configs(flags: dict):
    """(ServeConfig, InferenceConfig) from serve.py's flags, torch's threads set; a server compiles its scoring
    path where inductor can build kernels, unless told not."""
    import torch

    sflags, iflags = split_flags(flags, ServeConfig, InferenceConfig)
    cfg = ServeConfig(**sflags)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if "compile" not in iflags:
        iflags["compile"] = can_compile(compute_device())
        if not iflags["compile"]:
            log.warning("no C++ compiler (or Triton) for torch.compile: serving on the uncompiled path")
    return cfg, InferenceConfig(**iflags)


def app_from_env() -> FastAPI:
    """The app of one worker when serve.py --workers N > 1 has uvicorn start N processes, each loading its own
    model: serve.py passes its arguments in SLMREC_CHECKPOINT (the run or exported folder), SLMREC_DATA (the
    prepared dataset, empty for an exported folder alone) and SLMREC_FLAGS (JSON), so every worker runs with
    the flags given to serve.py."""
    source, data = os.environ.get("SLMREC_CHECKPOINT"), os.environ.get("SLMREC_DATA") or None
    if not source:
        raise FlagError("set SLMREC_CHECKPOINT (a run directory, with SLMREC_DATA, or a folder of export.py)")
    cfg, icfg = configs(json.loads(os.environ.get("SLMREC_FLAGS") or "{}"))
    exported = is_export(source)
    source, dataset = model_and_data(None if exported else source, source if exported else None, data)
    return create_app(Recommender.from_checkpoint(source, dataset, icfg), cfg)
