"""The engine behind the server: one scheduler thread that owns the model and runs every request.

Why one thread: the model, its prefixes and the decoding pools are touched by that thread only,
so nothing needs a lock but the inbox; the event loop stays free (``/health`` answers while the
model generates). Requests become jobs (one per prompt x choice); the thread puts each job into
the decoding pool of its search settings (prefix/decoding.py's `Pool`): one pool for every
one-beam job (greedy and sampled, each with its own token limit), one per beam setting. Jobs
join a running pool as soon as it has room and leave the step they are done, and each row
carries its own prefix, so a batch mixes prefixes freely. Between steps the thread takes what
the inbox holds (new jobs, cancellations, prefix loads and unloads) and runs one step of every
pool that has work; with nothing to do it sleeps on the inbox.

A job's tokens depend only on its prompt, prefix and settings (beam_search's guarantee; a sampled
job draws from its own generator), so its output is prefixtune-generate's whatever shares the
batch. Its text is prefixtune.generate.decode_until_eos of its tokens, cut at its first stop
string. Results go back to the event loop through `loop.call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from prefixtune.collate import Collator
from prefixtune.errors import UsageError
from prefixtune.generate import decode_until_eos
from prefixtune.generate_cli import Loaded, PrefixSpec, base_of, check_same_base
from prefixtune.prefix import PrefixError
from prefixtune.prefix.decoding import NO_PREFIX, Pool, search_settings
from prefixtune.prefix.decoding_beams import Sampling

from .schemas import APIError, CompletionRequest

log = logging.getLogger("prefixtune.serve")
_ABORT = object()  # the inbox task that ends the thread at once


@dataclass(frozen=True)
class PoolKey:
    """The search settings a pool runs: one-beam jobs share a pool (max_tokens is per job)."""

    num_beams: int
    max_new_tokens: int
    length_penalty: float


@dataclass
class Job:
    """One choice of one prompt of one request, and where its events go: `emit(index, event)`
    with event ("text", delta) while streaming, then ("done", text, finish_reason, tokens) or
    ("error", APIError)."""

    index: int
    ids: list[int]
    prefix: str
    max_tokens: int
    stops: list[str]
    stream: bool
    sampling: Sampling | None
    emit: Callable[[int, tuple], None]
    key: PoolKey | None = None
    tokens: list[int] = field(default_factory=list)  # so far (watched jobs)
    sent: str = ""  # text streamed so far
    stopped: bool = False  # a stop string was seen

    @property
    def watched(self) -> bool:
        return self.stream or bool(self.stops)


class Engine:
    """The model, its prefixes and the scheduler thread (see the module docstring).

    max_rows: rows per pool (inputs x beams); max_queue: jobs waiting beyond what the pools
    hold, after which requests get 429; max_prompt_tokens: a prompt's tokens with its eos;
    max_new_tokens: the most a request may ask for."""

    def __init__(
        self,
        loaded: Loaded,
        specs: list[PrefixSpec],
        *,
        folder: Path,
        base_name: str,
        max_rows: int = 128,
        max_queue: int = 256,
        max_prompt_tokens: int | None = None,
        max_new_tokens: int = 256,
        allow_other_base: bool = False,
    ) -> None:
        self.model, self.device = loaded.model, loaded.device
        self.folder, self.base_name = folder, base_name
        self.max_rows, self.max_queue, self.max_new_tokens = max_rows, max_queue, max_new_tokens
        self.max_prompt_tokens = max_prompt_tokens or loaded.settings["max_source_tokens"]
        self.allow_other_base = allow_other_base
        self.collator = loaded.collator
        # a prompt is encoded as prefixtune-generate encodes it (x + eos), but a longer one is
        # refused, not cut: this collator keeps one token more than the limit to tell
        self.encoder = Collator(
            loaded.collator.tok,
            encoder_decoder=loaded.collator.encoder_decoder,
            max_source_tokens=self.max_prompt_tokens + 1,
            max_target_tokens=2,
            decoder_start_token_id=loaded.collator.decoder_start,
        )
        self.tokenizer_lock = threading.Lock()  # a fast tokenizer is not safe across threads
        self.reference = (specs[0].name, base_of(specs[0]))  # the base every prefix must match
        # every prefix under its own name (the model's own prefix is never used: it cannot be
        # unloaded)
        self.model.add_prefix(specs[0].name, specs[0].folder, allow_other_base=allow_other_base)
        self.prefixes: dict[str, Path] = {spec.name: spec.folder for spec in specs}
        self.pools: dict[PoolKey, Pool] = {}
        self.jobs: dict[int, Job] = {}
        self.ids = itertools.count()
        self.inbox: queue.Queue[Callable[[], None]] = queue.Queue()
        self.lock = threading.Lock()  # guards `outstanding` and `accepting`
        self.outstanding = 0  # jobs submitted and not finished
        self.decoding = 0  # jobs in the pools' rows after the last step (for /health)
        self.accepting = True
        self.thread = threading.Thread(target=self._run, name="prefixtune-scheduler", daemon=True)
        self.stopped = threading.Event()

    # ------------------------------------------------------------------ event-loop side
    def start(self) -> None:
        self.thread.start()

    @property
    def names(self) -> list[str]:
        return sorted(self.prefixes)

    def resolve(self, model: str) -> str:
        """The internal prefix name of a request's `model`, or 404."""
        if model == self.base_name:
            return NO_PREFIX
        if model in self.prefixes:
            return model
        served = ", ".join([self.base_name, *self.names])
        raise APIError(
            404,
            f"model {model!r} is not served here; served: {served}",
            param="model",
            code="model_not_found",
        )

    def encode(self, prompt: str) -> list[int]:
        with self.tokenizer_lock:
            ids = self.encoder.encode_source(prompt)
        if len(ids) > self.max_prompt_tokens:
            raise APIError(
                413,
                f"prompt has more than {self.max_prompt_tokens} tokens (with its end token), "
                "this server's --max-prompt-tokens",
                param="prompt",
                code="prompt_too_long",
            )
        return ids

    def check(self, request: CompletionRequest) -> None:
        """The request's limits against this server's (400 naming the field)."""
        if request.max_tokens > self.max_new_tokens:
            raise APIError(
                400,
                f"max_tokens must be at most {self.max_new_tokens} (--max-new-tokens)",
                param="max_tokens",
            )
        if request.num_beams > self.max_rows:
            raise APIError(
                400, f"num_beams must be at most {self.max_rows} (--max-rows)", param="num_beams"
            )

    def submit(self, request: CompletionRequest, prefix: str, ids: list[list[int]], emit) -> list:
        """Jobs for every prompt x choice, handed to the scheduler; 429 when the queue is full,
        503 when the server is stopping. Returns the jobs' ids (for cancel)."""
        seeds = None
        if request.sampled:
            first = request.seed if request.seed is not None else secrets.randbits(62)
            seeds = itertools.count(first)
        jobs = []
        for prompt in ids:
            for _ in range(request.n):
                sampling = None
                if seeds is not None:
                    generator = torch.Generator(device=self.device).manual_seed(next(seeds))
                    sampling = Sampling(request.temperature, request.top_p, generator)
                index = len(jobs)
                jobs.append(
                    Job(
                        index=index,
                        ids=prompt,
                        prefix=prefix,
                        max_tokens=request.max_tokens,
                        stops=request.stops,
                        stream=request.stream,
                        sampling=sampling,
                        emit=emit,
                    )
                )
        key = PoolKey(1, self.max_new_tokens, 1.0)
        if request.num_beams > 1:
            key = PoolKey(request.num_beams, request.max_tokens, request.length_penalty)
        with self.lock:
            if not self.accepting:
                raise APIError(503, "the server is shutting down", code="shutting_down")
            room = self.max_rows + self.max_queue - self.outstanding
            if len(jobs) > room:
                raise APIError(
                    429,
                    f"the queue is full ({self.outstanding} jobs); retry later",
                    code="queue_full",
                )
            self.outstanding += len(jobs)
        keys = [next(self.ids) for _ in jobs]
        for job in jobs:
            job.key = key
        self.inbox.put(lambda: self._add(list(zip(keys, jobs, strict=True))))
        return keys

    def cancel(self, keys: list[int]) -> None:
        """Free the jobs' rows (a client went away); finished ones are ignored."""
        self.inbox.put(lambda: self._cancel(keys))

    def call(self, fn: Callable[[], object]) -> asyncio.Future:
        """Run fn on the scheduler thread between steps; its result (or exception) comes back
        as an asyncio future of the calling loop."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def run() -> None:
            try:
                result = fn()
            except BaseException as err:  # handed to the caller, who turns it into an error
                loop.call_soon_threadsafe(_settle, future, None, err)
            else:
                loop.call_soon_threadsafe(_settle, future, result, None)

        self.inbox.put(run)
        return future

    def load_prefix(self, name: str, folder: Path) -> None:
        """(scheduler thread) Serve the prefix in `folder` as `name`."""
        if name in self.prefixes or name == self.base_name:
            raise APIError(409, f"a model named {name!r} is already served", param="name")
        spec = PrefixSpec(name, folder)
        try:
            check_same_base(*self.reference, name, base_of(spec))
            self.model.add_prefix(name, folder, allow_other_base=self.allow_other_base)
        except (UsageError, PrefixError) as err:
            raise APIError(400, " ".join(str(err).split()), param="path") from None
        self.prefixes[name] = folder
        log.info("loaded prefix %s from %s", name, folder)

    def unload_prefix(self, name: str) -> None:
        """(scheduler thread) Stop serving a prefix: jobs still queued for it get a 404, jobs
        already decoding finish (their rows hold its keys/values)."""
        if name not in self.prefixes:
            raise APIError(404, f"no prefix named {name!r}; served: {self.names}", param="name")
        del self.prefixes[name]
        for pool in self.pools.values():
            for key in [k for k in pool.queue if self.jobs[k].prefix == name]:
                pool.cancel(key)
                self._fail(key, APIError(404, f"prefix {name!r} was unloaded", param="model"))
            pool.forget_prefix(name)
        del self.model.stored[name]
        log.info("unloaded prefix %s", name)

    def health(self) -> dict:
        return {
            "status": "ok" if self.accepting and self.thread.is_alive() else "stopping",
            "model": self.base_name,
            "prefixes": self.names,
            "device": str(self.device),
            "jobs": self.outstanding,
            "decoding": self.decoding,
        }

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful: refuse new requests, let the jobs in flight finish for up to `timeout`
        seconds, then fail the rest (503) and end the thread."""
        with self.lock:
            self.accepting = False
        self.inbox.put(lambda: None)  # wake the thread
        self.stopped.set()
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.inbox.put(_ABORT)
            self.thread.join(10)

    # ------------------------------------------------------------------ scheduler thread
    def _run(self) -> None:
        while True:
            busy = any(self.pools.values())
            if self.stopped.is_set() and not busy and self.inbox.empty():
                return
            try:
                task = self.inbox.get(block=not busy, timeout=None if not busy else 0)
            except queue.Empty:
                task = None
            while task is not None:
                if task is _ABORT:
                    self._abort()
                    return
                task()
                try:
                    task = self.inbox.get_nowait()
                except queue.Empty:
                    task = None
            for key, pool in list(self.pools.items()):
                if pool:
                    self._step(key, pool)
                if not pool and key.num_beams > 1:
                    del self.pools[key]  # beam pools are made per setting; the greedy one stays
            self.decoding = sum(len(pool.slots) for pool in self.pools.values())

    def _pool(self, key: PoolKey) -> Pool:
        if key not in self.pools:
            collator = self.collator
            search, pad, start = search_settings(
                self.model,
                num_beams=key.num_beams,
                max_new_tokens=key.max_new_tokens,
                min_new_tokens=0,
                length_penalty=key.length_penalty,
                early_stopping=True,
                eos_token_id=collator.eos,
                pad_token_id=collator.pad,
                decoder_start_token_id=collator.decoder_start if collator.encoder_decoder else None,
            )
            self.pools[key] = Pool(
                self.model,
                search,
                pad=pad,
                start=start,
                capacity=max(1, self.max_rows // key.num_beams),
                max_rows=self.max_rows,
                watch=self._watch if key.num_beams == 1 else None,
            )
        return self.pools[key]

    def _add(self, jobs: list[tuple[int, Job]]) -> None:
        for key, job in jobs:
            if job.prefix != NO_PREFIX and job.prefix not in self.prefixes:  # unloaded since
                self.jobs[key] = job
                self._fail(key, APIError(404, f"prefix {job.prefix!r} was unloaded"))
                continue
            pool = self._pool(job.key)
            one_beam = job.key.num_beams == 1
            self.jobs[key] = job
            pool.add(
                key,
                job.ids,
                job.prefix,
                max_new_tokens=job.max_tokens if one_beam else None,
                sampling=job.sampling,
            )

    def _cancel(self, keys: list[int]) -> None:
        for key in keys:
            job = self.jobs.pop(key, None)
            if job is None:
                continue
            pool = self.pools.get(job.key)
            if pool is not None:
                pool.cancel(key)
            self._release(1)

    def _step(self, key: PoolKey, pool: Pool) -> None:
        try:
            finished = pool.step()
        except Exception as err:  # a failing forward (out of memory, ...): fail its jobs
            log.exception("decoding failed")
            error = APIError(500, f"decoding failed: {type(err).__name__}: {err}")
            for k in [*pool.slots, *pool.queue]:
                if k in self.jobs:
                    self._fail(k, error)
            del self.pools[key]
            return
        for k, tokens in finished:
            self._finish(k, tokens)

    def _watch(self, items: list[tuple[int, int]]) -> set[int]:
        """The one-beam pool's new tokens: stream text deltas, and stop at stop strings."""
        stop = set()
        for key, token in items:
            job = self.jobs.get(key)
            if job is None or not job.watched:
                continue
            job.tokens.append(token)
            text = self._text(job.tokens)
            if job.stops and _cut(text, job.stops) is not None:
                job.stopped = True
                stop.add(key)
                continue
            if job.stream:
                hold = max((len(s) for s in job.stops), default=1) - 1  # a stop may be starting
                safe = text[: len(text) - hold] if hold else text
                if safe.endswith("\ufffd"):  # half a character so far
                    continue
                if safe.startswith(job.sent) and len(safe) > len(job.sent):
                    job.emit(job.index, ("text", safe[len(job.sent) :]))
                    job.sent = safe
        return stop

    def _text(self, tokens: list[int]) -> str:
        with self.tokenizer_lock:
            return decode_until_eos(self.collator, tokens)

    def _finish(self, key: int, tokens: list[int]) -> None:
        job = self.jobs.pop(key, None)
        if job is None:
            return
        self._release(1)
        text = self._text(tokens)
        cut = _cut(text, job.stops) if job.stops else None
        ended = self.collator.eos in tokens
        if cut is not None:
            text = text[:cut]
        reason = "stop" if ended or cut is not None else "length"
        count = len(tokens) - (1 if ended and tokens[-1] == self.collator.eos else 0)
        if job.stream and text.startswith(job.sent) and len(text) > len(job.sent):
            job.emit(job.index, ("text", text[len(job.sent) :]))
        job.emit(job.index, ("done", text, reason, count))

    def _fail(self, key: int, error: APIError) -> None:
        job = self.jobs.pop(key, None)
        if job is None:
            return
        self._release(1)
        job.emit(job.index, ("error", error))

    def _release(self, count: int) -> None:
        with self.lock:
            self.outstanding -= count

    def _abort(self) -> None:
        error = APIError(503, "the server shut down before this request finished")
        for key in list(self.jobs):
            self._fail(key, error)
        self.pools.clear()


def _cut(text: str, stops: list[str]) -> int | None:
    """Where the first stop string begins in text, or None."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def _settle(future: asyncio.Future, result, error) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
