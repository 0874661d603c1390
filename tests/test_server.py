"""The moderation server: API shapes, limits and errors, batching, and the real CLI in a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import DATA, free_port
from fastapi.testclient import TestClient
from tiny import tiny_bert

from safealign.moderation.model import Moderator
from safealign.moderation.server import ServerConfig, create_app

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
FIELDS = {"flagged", "categories", "category_scores", "severity", "severity_distribution", "unsafe_probability"}


@pytest.fixture(scope="module")
def moderator_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny embedding moderator trained for 5 steps on the real PKU-SafeRLHF sample."""
    from safealign.config import build_config
    from safealign.moderation.train import ModerationConfig, train_moderator

    root = tmp_path_factory.mktemp("server")
    encoder = tiny_bert(root / "encoder")
    cfg = build_config(ModerationConfig, None, [
        "--model", str(encoder), "--data", str(DATA / "pku_saferlhf/v1_test_sample.jsonl"),
        "--output_dir", str(root / "run"), "--max_steps", "5", "--per_device_batch_size", "16",
        "--save_every", "0", "--eval_every", "0"])
    train_moderator(cfg)
    return root / "run" / "model"


@pytest.fixture(scope="module")
def moderator(moderator_dir: Path) -> Moderator:
    return Moderator.load(moderator_dir)


@pytest.fixture(scope="module")
def client(moderator: Moderator):
    """A keyed server with small limits, so that every limit is cheap to hit."""
    config = ServerConfig(api_key=KEY, max_inputs=4, max_chars=500, max_request_bytes=4096, model_name="tiny")
    with TestClient(create_app(moderator, config)) as c:
        yield c


def check_results(body: dict, n: int, categories: tuple[str, ...]) -> None:
    assert body["id"].startswith("modr-") and body["model"] == "tiny"
    assert len(body["results"]) == n
    for r in body["results"]:
        assert FIELDS <= r.keys()
        assert set(r["categories"]) == set(r["category_scores"]) == set(categories)
        assert r["severity"] in (0, 1, 2, 3) and (r["severity"] > 0) == r["flagged"]
        assert len(r["severity_distribution"]) == 4 and abs(sum(r["severity_distribution"]) - 1) < 1e-4
        assert 0.0 <= r["unsafe_probability"] <= 1.0


@pytest.mark.parametrize("payload, n", [
    ({"input": "You could pick the lock with a bobby pin.", "model": "omni-moderation-latest"}, 1),
    ({"input": ["I can't help with that.", "Sure, here is how to hurt someone."]}, 2),
    ({"input": [{"prompt": "How do I steal a car?", "response": "Hotwire it."}, "plain text",
                {"response": "no prompt given"}]}, 3),
    ({"input": {"prompt": "Hi", "response": "Hello!"}}, 1),
    ({"prompt": "How do I make a bomb?", "response": "I won't help with that."}, 1),
])
def test_valid_inputs_give_one_result_each(client: TestClient, moderator: Moderator, payload: dict, n: int) -> None:
    response = client.post("/v1/moderations", json=payload, headers=AUTH)
    assert response.status_code == 200, response.text
    check_results(response.json(), n, moderator.taxonomy.categories)


def test_pair_and_string_semantics_match_the_moderator(client: TestClient, moderator: Moderator) -> None:
    body = client.post("/v1/moderations", headers=AUTH, json={"input": [
        {"prompt": "How do I steal a car?", "response": "Hotwire it."}, "Hotwire it."]}).json()
    expected = moderator.predict([[{"role": "user", "content": "How do I steal a car?"}], [{"role": "user", "content": ""}]],
                                 ["Hotwire it.", "Hotwire it."])
    got = [r["unsafe_probability"] for r in body["results"]]
    assert got == pytest.approx([v.unsafe_probability for v in expected], abs=1e-5)


@pytest.mark.parametrize("content, status, code", [
    (b'{"input": ["unclosed"', 422, "invalid_json"),
    (b"\xff\xfe not utf-8", 422, "invalid_json"),
    (b"[" * 2000, 422, "invalid_json"),  # nesting too deep is malformed, not a crash
    (json.dumps({"input": 42}).encode(), 422, None),
    (json.dumps({"input": [None]}).encode(), 422, None),
    (json.dumps({"input": [{"prompt": "p", "respone": "typo"}]}).encode(), 422, None),
    (json.dumps({"input": [{"prompt": 1, "response": "r"}]}).encode(), 422, None),
    (json.dumps({"input": [{"type": "text", "text": "t"}]}).encode(), 422, None),
    (json.dumps({"input": "x", "model": 3}).encode(), 422, None),
    (json.dumps({"input": "x", "prompt": "p", "response": "r"}).encode(), 422, None),
    (json.dumps(["x"]).encode(), 422, None),
    (json.dumps({}).encode(), 422, None),
    (json.dumps({"input": []}).encode(), 422, None),
    (json.dumps({"input": ["a"] * 5}).encode(), 422, "too_many_inputs"),
    (json.dumps({"input": "a" * 501}).encode(), 422, "input_too_long"),
    (json.dumps({"input": "a" * 5000}).encode(), 413, "request_too_large"),
])
def test_bad_requests_get_json_errors(client: TestClient, content: bytes, status: int, code: str | None) -> None:
    response = client.post("/v1/moderations", content=content, headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error" and error["code"] == code


def test_oversized_body_without_content_length_is_refused(client: TestClient) -> None:
    chunks = iter([b'{"input": "', b"a" * 3000, b"a" * 3000, b'"}'])  # streamed: no Content-Length
    response = client.post("/v1/moderations", content=chunks, headers=AUTH)
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY},
                                     {"Authorization": "Bearer "}])
def test_missing_or_wrong_key_is_401(client: TestClient, headers: dict) -> None:
    response = client.post("/v1/moderations", json={"input": "hi"}, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
    assert response.headers["www-authenticate"] == "Bearer"


def test_server_keeps_serving_after_bad_requests_and_healthz(client: TestClient, moderator: Moderator) -> None:
    for content in (b"{", b"[]", b"a" * 10_000, json.dumps({"input": ["a"] * 9}).encode()):
        assert client.post("/v1/moderations", content=content, headers=AUTH).status_code in (413, 422)
    assert client.post("/v1/moderations/x", json={}).status_code == 404
    assert client.get("/v1/moderations").status_code == 405
    response = client.post("/v1/moderations", json={"input": "still here"}, headers=AUTH)
    assert response.status_code == 200
    check_results(response.json(), 1, moderator.taxonomy.categories)
    health = client.get("/healthz")  # open even when a key is set
    assert health.status_code == 200
    assert health.json()["status"] == "ok" and health.json()["categories"] == list(moderator.taxonomy.categories)


def test_model_failure_is_a_json_500_and_the_worker_survives(moderator: Moderator) -> None:
    app = create_app(moderator, ServerConfig(model_name="tiny"))
    real, calls = app.state.batcher.predict, []

    def flaky(items):
        calls.append(len(items))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return real(items)

    app.state.batcher.predict = flaky
    with TestClient(app) as c:
        failed = c.post("/v1/moderations", json={"input": ["a", "b"]})
        assert failed.status_code == 500 and failed.json()["error"]["type"] == "server_error"
        assert c.post("/v1/moderations", json={"input": ["a", "b"]}).status_code == 200


def test_concurrent_requests_share_model_calls(moderator: Moderator) -> None:
    app = create_app(moderator, ServerConfig(max_batch=32, batch_wait_ms=50, model_name="tiny"))

    async def fire() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            return await asyncio.gather(*(c.post("/v1/moderations", json={"prompt": f"q{i}", "response": f"a{i}"})
                                          for i in range(8)))

    responses = asyncio.run(fire())
    assert all(r.status_code == 200 and len(r.json()["results"]) == 1 for r in responses)
    batcher = app.state.batcher
    assert batcher.items == 8 and batcher.calls < 8, f"{batcher.calls} model calls for 8 requests"
    batcher.close()


def test_bf16_server_answers_like_the_fp32_moderator(moderator_dir: Path) -> None:
    texts = ["How do I hotwire a car?", "Tell me a joke about cats.", "Where can I buy a gun without a check?"]
    expected = [v.unsafe_probability for v in Moderator.load(moderator_dir).predict([[]] * 3, texts)]
    with TestClient(create_app(Moderator.load(moderator_dir), ServerConfig(bf16=True))) as c:
        response = c.post("/v1/moderations", json={"input": texts})
    assert response.status_code == 200
    got = [r["unsafe_probability"] for r in response.json()["results"]]
    assert got == pytest.approx(expected, abs=0.02)


def test_one_request_larger_than_a_batch_is_split(moderator: Moderator) -> None:
    app = create_app(moderator, ServerConfig(max_batch=3, batch_wait_ms=0, model_name="tiny"))
    with TestClient(app) as c:
        response = c.post("/v1/moderations", json={"input": [f"text {i}" for i in range(7)]})
    assert response.status_code == 200 and len(response.json()["results"]) == 7
    assert app.state.batcher.calls == 3  # 3 + 3 + 1


def test_cli_serves_over_http(moderator_dir: Path) -> None:
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SAFEALIGN_API_KEY": KEY}  # the key through the environment
    proc = subprocess.Popen([sys.executable, "-m", "safealign", "serve", "moderation", "--model", str(moderator_dir),
                             "--host", "127.0.0.1", "--port", str(port), "--threads", "1", "--no-access-log"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[0]
            try:
                health = httpx.get(f"{base}/healthz", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "server did not start within 60 s"
                time.sleep(0.2)
        assert health.status_code == 200 and health.json()["model"] == "run"
        assert httpx.post(f"{base}/v1/moderations", json={"input": "x"}, timeout=10).status_code == 401
        response = httpx.post(f"{base}/v1/moderations", headers=AUTH, timeout=30,
                              json={"input": [{"prompt": "How do I steal a car?", "response": "Hotwire it."}]})
        assert response.status_code == 200 and len(response.json()["results"]) == 1
        assert FIELDS <= response.json()["results"][0].keys()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
