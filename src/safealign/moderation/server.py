"""An HTTP moderation service: `POST /v1/moderations` in the OpenAI shape, micro-batched.

Requests (a JSON body of at most `max_request_bytes`, with 1 to `max_inputs` inputs):

- OpenAI shape: `{"input": "text"}` or `{"input": ["text", ...]}`, optional `"model"`
  (accepted and ignored: one model is served and the response names it). A string is
  judged as the assistant *response* to an empty prompt: the moderator is a QA-moderator
  (BeaverTails) and judges what a model said, in context.
- Pairs: `{"input": [{"prompt": "...", "response": "..."}, ...]}` (strings and pairs may be
  mixed), `{"input": {"prompt": ..., "response": ...}}` or top-level `{"prompt", "response"}`.
  `response` is required, `prompt` defaults to "", other keys are an error (no silent typos).

Response: `{"id": "modr-...", "model": NAME, "results": [...]}`, one result per input in order:
`{"flagged", "categories" {name: bool}, "category_scores" {name: float}, "severity" 0-3,
"severity_distribution" [p0..p3], "unsafe_probability"}`, names from the model's taxonomy.

Errors are `{"error": {"message", "type", "param", "code"}}`: 401 missing or wrong `Authorization:
Bearer KEY` (when a key is set); 413 body over `max_request_bytes`; 422 malformed JSON, wrong
types, no or too many inputs, an input over `max_chars` characters; 404/405 other routes; 500
only for an unexpected model failure. `GET /healthz` (open) gives the model and counters.

Concurrent requests share model calls: inputs go onto one asyncio queue; one worker takes up to
`max_batch`, waiting at most `batch_wait_ms` after the first for more, and runs the model in one
dedicated thread (torch never runs concurrently; the event loop keeps parsing requests meanwhile).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import torch
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from safealign.config import ConfigError
from safealign.moderation.model import Moderator, Verdict

log = logging.getLogger("safealign.server")
PAIR_KEYS = {"prompt", "response"}
# The OpenAI result fields first, then the severity-sensitive extensions.
RESULT_FIELDS = ("flagged", "categories", "category_scores", "severity", "severity_distribution", "unsafe_probability")


@dataclass
class ServerConfig:
    """Limits and batching of the moderation server (the `safealign serve moderation` flags)."""

    max_batch: int = 32
    """Most inputs in one model call."""
    batch_wait_ms: float = 2.0
    """How long the batcher waits after the first queued input for more to join its call."""
    max_request_bytes: int = 1_000_000
    """Largest accepted request body (413 above)."""
    max_inputs: int = 256
    """Most inputs in one request (422 above)."""
    max_chars: int = 32_000
    """Most characters in one input, prompt and response together (422 above)."""
    api_key: str | None = None
    """When set, every moderation request needs `Authorization: Bearer <key>`."""
    model_name: str = "safealign-moderation"
    """The name reported in responses and /healthz."""
    threads: int = 1
    """Torch threads of the model worker (leave the event loop a core: see `safealign serve moderation`)."""
    forward_batch: int = 16
    """Inputs per forward pass within a model call (sorted by length first, so padding stays small)."""
    bf16: bool = False
    """Run the model with bfloat16 weights (`Moderator.to_bfloat16`, in place): ~3x faster than fp32 on CPUs with AMX/AVX512-BF16; p(unsafe) moves ~1e-3."""

    def validate(self) -> None:
        """Check settings once, early, naming the bad field."""
        for name in ("max_batch", "max_request_bytes", "max_inputs", "max_chars", "threads", "forward_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if self.batch_wait_ms < 0:
            raise ConfigError(f"batch_wait_ms: must not be negative, got {self.batch_wait_ms}")


@dataclass(kw_only=True)
class ServeConfig(ServerConfig):
    """`safealign serve moderation`: where to listen and which moderator, beside the server's limits."""

    model: str
    """A moderation folder (from `safealign train moderation`)."""
    host: str = "127.0.0.1"
    """Address to listen on (127.0.0.1: this machine only)."""
    port: int = 8000
    """TCP port."""
    api_key: str | None = None
    """Require 'Authorization: Bearer KEY' (default: $SAFEALIGN_API_KEY; neither: open)."""
    threads: int | None = None  # type: ignore[assignment]
    """Torch threads of the model worker (default: CPU cores - 1, at least 1: the event loop and clients keep a core)."""
    model_name: str | None = None  # type: ignore[assignment]
    """Name reported in responses and /healthz (default: the folder's name, or its run's for RUN/model)."""
    access_log: bool = True
    """Log every request."""

    def validate(self) -> None:
        """Check settings once, early; fills the defaults that depend on the machine, the environment and the folder."""
        import os

        if not 0 < self.port < 65536:
            raise ConfigError(f"port: must be in 1..65535, got {self.port}")
        if self.api_key is None:
            self.api_key = os.environ.get("SAFEALIGN_API_KEY") or None
        if self.threads is None:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
            self.threads = max(1, cores - 1)
        if self.model_name is None:
            folder = Path(self.model).resolve()
            self.model_name = folder.parent.name if folder.name == "model" and folder.parent.name else folder.name
        super().validate()


@dataclass(eq=False)  # exceptions stay hashable
class ApiError(Exception):
    """A client error answered as `{"error": {...}}` with an HTTP status."""

    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None

    def response(self, headers: dict[str, str] | None = None) -> Response:
        """The JSON error response (401s also tell the client how to authenticate)."""
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        headers = {**(headers or {}), **({"WWW-Authenticate": "Bearer"} if self.status == 401 else {})}
        return Response(orjson.dumps(body), self.status, headers, media_type="application/json")


@dataclass
class Item:
    """One input to judge: the user prompt and the assistant response."""

    prompt: str
    response: str


def parse_request(payload: Any, max_inputs: int, max_chars: int) -> list[Item]:
    """The inputs of a decoded request body, in order; ApiError(422) when it is not a valid request."""
    if not isinstance(payload, dict):
        raise ApiError(422, "the request body must be a JSON object")
    if payload.get("model") is not None and not isinstance(payload["model"], str):
        raise ApiError(422, "'model' must be a string", param="model")
    top_pair = not PAIR_KEYS.isdisjoint(payload)
    if "input" in payload and top_pair:
        raise ApiError(422, "send either 'input' or a top-level 'prompt'/'response' pair, not both", param="input")
    if top_pair:
        raw: list[Any] = [{k: payload[k] for k in PAIR_KEYS & payload.keys()}]
    elif "input" not in payload:
        raise ApiError(422, "missing 'input' (a string, a list of strings or prompt/response pairs)", param="input")
    elif isinstance(payload["input"], list):
        raw = payload["input"]
    else:
        raw = [payload["input"]]
    if not raw:
        raise ApiError(422, "'input' must not be empty", param="input")
    if len(raw) > max_inputs:
        raise ApiError(422, f"too many inputs: {len(raw)} > {max_inputs}", param="input", code="too_many_inputs")
    items = [_item(x, i) for i, x in enumerate(raw)]
    for i, item in enumerate(items):
        if len(item.prompt) + len(item.response) > max_chars:
            raise ApiError(422, f"input[{i}] is over {max_chars} characters", param=f"input[{i}]", code="input_too_long")
    return items


def _item(x: Any, i: int) -> Item:
    """One input: a string (the response to an empty prompt) or a {prompt, response} object."""
    if isinstance(x, str):
        return Item("", x)
    if not isinstance(x, dict):
        raise ApiError(422, f"input[{i}]: expected a string or a {{prompt, response}} object", param=f"input[{i}]")
    unknown = sorted(set(x) - PAIR_KEYS)
    if unknown:  # OpenAI's multimodal content parts ({"type": ...}) land here too: text only
        raise ApiError(422, f"input[{i}]: unknown field(s) {', '.join(unknown)} in a pair", param=f"input[{i}]")
    prompt, response = x.get("prompt", ""), x.get("response")
    if not isinstance(response, str) or not isinstance(prompt, str):
        raise ApiError(422, f"input[{i}]: 'response' (required) and 'prompt' must be strings", param=f"input[{i}]")
    return Item(prompt, response)


class MicroBatcher:
    """Gathers inputs from concurrent requests into model calls run by one worker thread."""

    def __init__(self, predict: Callable[[list[Item]], list[Verdict]], max_batch: int, wait_ms: float, threads: int) -> None:
        self.predict, self.max_batch, self.wait_s = predict, max_batch, wait_ms / 1000
        # One thread: torch is never entered concurrently; the initializer sets its thread count there.
        self.executor = ThreadPoolExecutor(1, "moderator", initializer=torch.set_num_threads, initargs=(threads,))
        self.calls = self.items = 0  # model calls made and inputs judged so far
        self._queue: asyncio.Queue[tuple[Item, asyncio.Future[Verdict]]] | None = None
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, items: list[Item]) -> list[Verdict]:
        """Verdicts for `items`, in order, once the worker has judged them."""
        loop = asyncio.get_running_loop()
        # Queue and worker belong to the serving loop: started lazily, anew for a new loop (test clients).
        if self._worker is None or self._worker.done() or self._worker.get_loop() is not loop:
            self._queue = asyncio.Queue()
            self._worker = loop.create_task(self._run(self._queue))
        futures = [loop.create_future() for _ in items]
        for item, future in zip(items, futures, strict=True):
            self._queue.put_nowait((item, future))
        results = await asyncio.gather(*futures, return_exceptions=True)  # retrieve every failure, raise one
        for error in (r for r in results if isinstance(r, BaseException)):
            raise error
        return results

    async def _run(self, queue: asyncio.Queue[tuple[Item, asyncio.Future[Verdict]]]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            deadline = loop.time() + self.wait_s
            while len(batch) < self.max_batch:  # take what is queued, then wait out the deadline
                remaining = deadline - loop.time()
                try:
                    batch.append(queue.get_nowait() if not queue.empty() or remaining <= 0
                                 else await asyncio.wait_for(queue.get(), remaining))
                except (asyncio.QueueEmpty, TimeoutError):
                    break
            live = [(item, f) for item, f in batch if not f.done()]  # a gone client's inputs are skipped
            if live:
                await self._judge(loop, live)

    async def _judge(self, loop: asyncio.AbstractEventLoop, live: list[tuple[Item, asyncio.Future[Verdict]]]) -> None:
        self.calls, self.items = self.calls + 1, self.items + len(live)
        try:
            verdicts = await loop.run_in_executor(self.executor, self.predict, [item for item, _ in live])
            pairs = list(zip(live, verdicts, strict=True))  # a verdict per input, or the whole batch fails
        except Exception as exc:  # fail this batch's requests, keep the worker alive for the next
            log.exception("moderation model failed on a batch of %d", len(live))
            for _, future in live:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), verdict in pairs:
            if not future.done():
                future.set_result(verdict)

    def close(self) -> None:
        """Stop the worker and its thread."""
        if self._worker is not None:
            self._worker.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing (413) as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body is {declared} bytes, over the limit of {limit}", code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():  # a lying or absent Content-Length is caught here
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body is over the limit of {limit} bytes", code="request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def check_key(request: Request, key: str | None) -> None:
    """ApiError(401) unless no key is configured or the bearer token matches it."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if key is not None and (scheme.lower() != "bearer" or not token.strip()):
        raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'", "authentication_error")
    if key is not None and not hmac.compare_digest(token.strip().encode(), key.encode()):  # constant time
        raise ApiError(401, "invalid API key", "authentication_error", code="invalid_api_key")


def create_app(moderator: Moderator, config: ServerConfig | None = None) -> FastAPI:
    """The FastAPI app serving `moderator`; `app.state.batcher` holds the batcher and its counters."""
    config = config or ServerConfig()
    config.validate()
    if config.bf16:
        moderator.to_bfloat16()

    def predict(items: list[Item]) -> list[Verdict]:
        # Length-sorted forward passes pad little: a batch of 32 random inputs runs ~1.4x faster in fp32.
        order = sorted(range(len(items)), key=lambda i: len(items[i].prompt) + len(items[i].response))
        verdicts = moderator.predict([[{"role": "user", "content": items[i].prompt}] for i in order],
                                     [items[i].response for i in order], config.forward_batch)
        return [v for _, v in sorted(zip(order, verdicts, strict=True), key=lambda pair: pair[0])]

    batcher = MicroBatcher(predict, config.max_batch, config.batch_wait_ms, config.threads)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        batcher.close()

    app = FastAPI(title="safealign moderation", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.batcher = batcher

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return ApiError(exc.status_code, str(exc.detail)).response(exc.headers)  # keeps e.g. Allow on a 405

    @app.get("/healthz")
    async def healthz() -> Response:
        meta = moderator.meta
        return Response(orjson.dumps({
            "status": "ok", "model": config.model_name, "backend": meta.backend, "encoder": meta.encoder,
            "taxonomy": meta.taxonomy, "categories": list(moderator.taxonomy.categories),
            "threshold": meta.threshold, "max_batch": config.max_batch, "batch_wait_ms": config.batch_wait_ms,
            "model_calls": batcher.calls, "inputs_judged": batcher.items}), media_type="application/json")

    @app.post("/v1/moderations")
    async def moderations(request: Request) -> Response:
        try:
            check_key(request, config.api_key)
            body = await read_body(request, config.max_request_bytes)
            try:
                payload = orjson.loads(body)
            except orjson.JSONDecodeError as exc:  # also invalid UTF-8 and too-deep nesting
                raise ApiError(422, f"malformed JSON: {exc}", code="invalid_json") from None
            verdicts = await batcher.submit(parse_request(payload, config.max_inputs, config.max_chars))
        except ApiError as exc:
            return exc.response()
        except Exception:  # a model failure; already logged by the batcher when it was one
            log.exception("moderation request failed")
            return ApiError(500, "internal error while moderating", "server_error").response()
        body = {"id": f"modr-{uuid.uuid4().hex}", "model": config.model_name,
                "results": [{k: getattr(v, k) for k in RESULT_FIELDS} for v in verdicts]}
        return Response(orjson.dumps(body), media_type="application/json")

    return app
