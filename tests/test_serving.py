"""serve.py's app: the same answers as recommend.py, concurrent requests batched, every bad request a 4xx with a
one-line reason, an internal error a 500 after which the next request is served."""

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

import finetune
import recommend
import train_sr_trad
from slmrec.recommender import Recommender
from slmrec.serving import ServeConfig, create_app
from helpers import TINY_TRAIN


@pytest.fixture(params=["sasrec", "ellmrec"])
def run_dir(request, tiny_dataset, tiny_embedding, tiny_lm_dir, tmp_path):
    out = tmp_path / request.param
    if request.param == "sasrec":
        train_sr_trad.main(str(tiny_dataset.path), str(out), max_steps=2, eval_steps=2)
    else:
        finetune.main(str(tiny_dataset.path), str(tiny_embedding), str(out), base_model=str(tiny_lm_dir), **TINY_TRAIN)
    return out


def client(run_dir, data, **cfg):
    return TestClient(
        create_app(Recommender.from_checkpoint(run_dir, data), ServeConfig(**cfg)), raise_server_exceptions=False
    )  # a 500 is an answer here, as a client sees it


def test_served_answers_equal_recommend_py(run_dir, tiny_dataset, tmp_path):
    item_ids, _ = tiny_dataset.items()
    user = tiny_dataset.users()[3]
    history = [item_ids[i] for i in (3, 1, 7)]
    lines = [{"history": history}, {"user": user}, {"history": history[:1], "user": "someone"}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    recommend.main(
        str(run_dir), str(tiny_dataset.path), input=str(tmp_path / "in.jsonl"), k=5, output=str(tmp_path / "out.jsonl")
    )
    expected = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    with client(run_dir, tiny_dataset) as c:
        assert c.get("/health").json() == {"status": "ok"} and c.get("/ready").json()["ready"] is True
        assert "/recommend" in c.get("/openapi.json").json()["paths"]
        one = [c.post("/recommend", json={**x, "k": 5}).json() for x in lines]
        many = c.post("/recommend", json=[{**x, "k": 5} for x in lines]).json()
    assert one == expected and many == expected
    assert one[1]["user"] == user and len(one[0]["items"]) == 5


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(run_dir, tiny_dataset):
    rec = Recommender.from_checkpoint(run_dir, tiny_dataset)
    histories = [[(i * 7 + j) % tiny_dataset.num_items + 1 for j in range(1 + i % 5)] for i in range(40)]
    item_ids, _ = tiny_dataset.items()
    expected = rec.recommend(histories, k=3)
    with client(run_dir, tiny_dataset, max_wait_ms=50, max_batch=16) as c, ThreadPoolExecutor(16) as pool:
        answers = list(
            pool.map(
                lambda h: c.post("/recommend", json={"history": [item_ids[i] for i in h], "k": 3}).json(), histories
            )
        )
        sizes = c.app.state.batcher.sizes
    assert [[item_ids[i] for i, _ in top] for top in expected] == [[x["item"] for x in a["items"]] for a in answers]
    assert max(sizes) > 1 and max(sizes) <= 16  # batched, within the limit


@pytest.mark.parametrize("run_dir", ["sasrec"], indirect=True)
def test_bad_requests_get_a_4xx_with_a_reason_and_the_server_goes_on(run_dir, tiny_dataset, monkeypatch):
    item_ids, _ = tiny_dataset.items()
    good = {"history": [item_ids[1]], "k": 2}
    cases = [
        ({"history": ["no-such-item"]}, 400, "not in"),
        ({"user": "no-such-user"}, 404, "user 'no-such-user' not in"),
        ({"history": []}, 400, "empty history"),
        ({"history": [item_ids[1]] * 21}, 400, "more than 20"),
        ({"history": [item_ids[1]], "k": 0}, 400, "k must be an integer in 1.."),
        ({"history": [item_ids[1]], "k": tiny_dataset.num_items + 1}, 400, "k must be an integer in 1.."),
        ({"k": 3}, 400, 'give "history"'),
        ({"history": [True]}, 422, "history.0: "),  # JSON true is not item 1, user 1 or k 1
        ({"user": True}, 422, "user: "),
        ({"history": [item_ids[1]], "k": True}, 422, "k: "),
        ({"history": [item_ids[1]], "k": "many"}, 422, "k: "),
        ([good] * 4, 400, "a list of 1..3 requests"),
        ([], 400, "a list of 1..3 requests"),
    ]
    with client(run_dir, tiny_dataset, max_history=20, max_list=3, max_body_bytes=2000) as c:
        for body, status, message in cases:
            r = c.post("/recommend", json=body)
            assert r.status_code == status and message in r.json()["error"], (body, r.status_code, r.text)
            assert "\n" not in r.json()["error"]
        r = c.post("/recommend", content=b'{"history": [', headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"].startswith("malformed JSON")
        r = c.post(
            "/recommend",
            content=json.dumps({"history": ["x" * 3000]}).encode(),
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 413 and "over 2000 bytes" in r.json()["error"]
        # without a length (chunked): the limit is counted while the body arrives; a small one is served
        big = json.dumps({"history": ["x" * 3000]}).encode()
        r = c.post(
            "/recommend",
            content=(big[i : i + 100] for i in range(0, len(big), 100)),
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 413 and "over 2000 bytes" in r.json()["error"]
        small = json.dumps(good).encode()
        r = c.post(
            "/recommend",
            content=(small[i : i + 5] for i in range(0, len(small), 5)),
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 200 and len(r.json()["items"]) == 2
        # an internal error: a 500 for that request, logged; the next one is served
        real = c.app.state.batcher.fn
        monkeypatch.setattr(c.app.state.batcher, "fn", lambda jobs: 1 / 0)
        r = c.post("/recommend", json=good)
        assert r.status_code == 500 and "internal error" in r.json()["error"]
        monkeypatch.setattr(c.app.state.batcher, "fn", real)
        assert c.post("/recommend", json=good).status_code == 200
        assert c.app.state.batcher.arriving == 0  # every refused request was counted out of the arrivals


def test_shutdown_lets_queued_requests_finish():
    """Graceful shutdown: every job queued or in flight when the server stops is still scored and answered."""
    import asyncio
    import time

    from slmrec.serving import MicroBatcher

    def slow(jobs):
        time.sleep(0.02)
        return [j * 10 for j in jobs]

    async def scenario():
        batcher = MicroBatcher(slow, max_batch=4, max_wait_s=0.001)
        batcher.task = asyncio.create_task(batcher.run())
        pending = [asyncio.create_task(batcher.submit(i)) for i in range(20)]
        await asyncio.sleep(0)  # all queued, the first batch in flight
        await batcher.drain()
        return await asyncio.gather(*pending), batcher.sizes

    results, sizes = asyncio.run(scenario())
    assert results == [i * 10 for i in range(20)] and max(sizes) == 4 and sum(sizes) == 20


def test_a_batch_waits_for_requests_on_their_way_not_for_a_timer():
    """A lone job is scored at once, not after max_wait; a job whose request is still being read (counted in
    `arriving`, as the Arrivals middleware does) is waited for and joins the batch."""
    import asyncio
    import time

    from slmrec.serving import MicroBatcher

    async def scenario():
        batcher = MicroBatcher(lambda jobs: jobs, max_batch=8, max_wait_s=2.0)
        batcher.task = asyncio.create_task(batcher.run())
        t = time.monotonic()
        await batcher.submit(1)
        alone = time.monotonic() - t
        scope = {"slmrec.arriving": True}
        batcher.arriving += 1
        first = asyncio.create_task(batcher.submit(2))
        await asyncio.sleep(0.2)  # the other request is still being read
        batcher.arrived(scope)
        await batcher.submit(3)
        await first
        await batcher.drain()
        return alone, batcher.sizes, batcher.arriving

    alone, sizes, arriving = asyncio.run(scenario())
    assert alone < 1.0 and sizes == [1, 2] and arriving == 0


def test_requests_in_flight_are_counted_until_their_endpoint_runs(run_dir, tiny_dataset, monkeypatch):
    """The endpoint counts its own request out (the same ASGI scope the middleware counted it in), so a batch
    does not wait for requests already queued."""
    with client(run_dir, tiny_dataset) as c:
        batcher = c.app.state.batcher
        seen = []
        real = batcher.arrived
        monkeypatch.setattr(batcher, "arrived", lambda scope: (seen.append("slmrec.arriving" in scope), real(scope)))
        item_ids, _ = tiny_dataset.items()
        assert c.post("/recommend", json={"history": [item_ids[1]]}).status_code == 200
    assert seen == [True, False] and batcher.arriving == 0


def test_a_worker_of_serve_py_workers_runs_with_serve_py_flags(run_dir, tiny_dataset, monkeypatch):
    """serve.py --workers N hands its flags to each worker (app_from_env): a worker's app has them."""
    from slmrec.serving import app_from_env

    monkeypatch.setenv("SLMREC_CHECKPOINT", str(run_dir))
    monkeypatch.setenv("SLMREC_DATA", str(tiny_dataset.path))
    monkeypatch.setenv("SLMREC_FLAGS", json.dumps({"max_batch": 3, "precision": "fp32", "compile": False}))
    with TestClient(app_from_env()) as c:
        assert c.get("/ready").json()["max_batch"] == 3
        assert len(c.post("/recommend", json={"user": tiny_dataset.users()[0], "k": 2}).json()["items"]) == 2
    monkeypatch.setenv("SLMREC_FLAGS", json.dumps({"max_batch": 0}))
    with pytest.raises(ValueError, match="--max_batch"):
        app_from_env()
