"""The HTTP routes (FastAPI): OpenAI's completions and models endpoints, health, and the admin
calls that load and unload prefixes. Every failure is an OpenAI-style JSON error (schemas.py);
bodies are parsed here, not by FastAPI's signature magic, so that malformed JSON and wrong types
are 400s that name the field."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

from .engine import Engine
from .schemas import APIError, CompletionRequest, PrefixRequest

log = logging.getLogger("prefixtune.serve")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # a served prefix's name
DISCONNECT_POLL_S = 0.5  # how often a waiting request checks that its client is still there


def create_app(engine: Engine, api_key: str | None = None, *, stop_timeout: float = 30) -> FastAPI:
    """The app around a started or unstarted engine: it starts the engine's thread when the app
    starts and stops it (gracefully) when the app shuts down."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not engine.thread.is_alive():
            engine.start()
        yield
        await asyncio.to_thread(engine.stop, stop_timeout)

    app = FastAPI(title="prefixtune-serve", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        error = APIError(err.status_code, str(err.detail))
        return JSONResponse(error.body(), status_code=err.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        error = _invalid(err.errors())
        return JSONResponse(error.body(), status_code=error.status)

    def authorize(request: Request, *, admin: bool = False) -> None:
        if api_key is None:
            if admin:
                raise APIError(403, "admin calls need a server started with --api-key")
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip(), api_key):
            raise APIError(401, "missing or wrong API key (Authorization: Bearer KEY)")

    @app.get("/health")
    async def health() -> dict:
        return engine.health()

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        authorize(request)
        names = [engine.base_name, *engine.names]
        return {
            "object": "list",
            "data": [
                {
                    "id": name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "prefixtune",
                    "root": engine.base_name,
                    "prefix": name != engine.base_name,
                }
                for name in names
            ],
        }

    @app.post("/v1/completions")
    async def completions(request: Request):
        authorize(request)
        body = await _parse(request, CompletionRequest)
        prefix = engine.resolve(body.model)
        engine.check(body)
        ids = [engine.encode(prompt) for prompt in body.prompts]
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def emit(index: int, event: tuple) -> None:  # called on the scheduler thread
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting
                loop.call_soon_threadsafe(events.put_nowait, (index, event))

        keys = engine.submit(body, prefix, ids, emit)
        head = {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": body.model,
        }
        if body.stream:
            return StreamingResponse(
                _stream(engine, keys, events, head), media_type="text/event-stream"
            )
        return await _collect(engine, request, keys, events, head, ids, body.n)

    @app.post("/v1/prefixes")
    async def load_prefix(request: Request) -> dict:
        authorize(request, admin=True)
        body = await _parse(request, PrefixRequest)
        folder = Path(body.path) if body.path else Path(body.name)
        if not folder.is_absolute():
            folder = engine.folder / folder
        if (folder / "prefix").is_dir() and not (folder / "prefix_config.json").exists():
            folder = folder / "prefix"  # a run folder: its prefix/
        name = body.name or (folder.parent.name if folder.name == "prefix" else folder.name)
        if not NAME.fullmatch(name):
            raise APIError(400, f"name {name!r} must match {NAME.pattern}", param="name")
        await engine.call(lambda: engine.load_prefix(name, folder))
        return {"object": "model", "id": name, "path": str(folder)}

    @app.delete("/v1/prefixes/{name}")
    async def unload_prefix(name: str, request: Request) -> dict:
        authorize(request, admin=True)
        await engine.call(lambda: engine.unload_prefix(name))
        return {"object": "model", "id": name, "deleted": True}

    return app


async def _parse(request: Request, schema: type[BaseModel]):
    raw = await request.body()
    try:
        data = json.loads(raw)
    except ValueError as err:
        raise APIError(400, f"the body is not JSON ({err})") from None
    if not isinstance(data, dict):
        raise APIError(400, "the body must be a JSON object")
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        raise _invalid(err.errors()) from None


def _invalid(errors: list) -> APIError:
    """A pydantic error list as one 400 naming its first field."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = loc[0] if loc else None
    where = ".".join(loc) if loc else "body"
    message = first.get("msg", "invalid").removeprefix("Value error, ")
    if first.get("type") == "extra_forbidden":
        message = "unknown field"
    return APIError(400, f"{where}: {message}", param=param)


async def _collect(engine, request, keys, events, head, ids, n) -> dict:
    """Wait for every choice (checking the client is still there); the completion body."""
    choices: dict[int, dict] = {}
    tokens = 0
    try:
        while len(choices) < len(keys):
            try:
                index, event = await asyncio.wait_for(events.get(), DISCONNECT_POLL_S)
            except TimeoutError:
                if await request.is_disconnected():
                    engine.cancel(keys)
                    raise APIError(400, "the client disconnected") from None
                continue
            if event[0] == "error":
                engine.cancel(keys)
                raise event[1]
            if event[0] == "done":
                _, text, reason, count = event
                tokens += count
                choices[index] = {
                    "index": index,
                    "text": text,
                    "logprobs": None,
                    "finish_reason": reason,
                }
    except asyncio.CancelledError:
        engine.cancel(keys)
        raise
    prompt_tokens = sum(len(x) for x in ids)
    return {
        **head,
        "choices": [choices[i] for i in range(len(keys))],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": tokens,
            "total_tokens": prompt_tokens + tokens,
        },
    }


async def _stream(engine, keys, events, head) -> AsyncIterator[str]:
    """Server-sent events: a chunk per text delta, one with each choice's finish_reason, then
    [DONE]; an error ends the stream with an error event. A client that goes away cancels this
    generator, which frees its rows."""
    done = 0
    try:
        while done < len(keys):
            index, event = await events.get()
            if event[0] == "error":
                yield f"data: {json.dumps(event[1].body())}\n\n"
                return
            text, reason = event[1], None
            if event[0] == "done":
                done += 1
                text, reason = "", event[2]  # the text came as deltas
            choice = {"index": index, "text": text, "logprobs": None, "finish_reason": reason}
            yield f"data: {json.dumps({**head, 'choices': [choice]})}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        if done < len(keys):
            engine.cancel(keys)
