"""Served LoRA adapters: ``/api/adapters``, each adapter a chat model of its own.

An adapter model is a chat model whose module is a ``lora_view`` (psionic/lora.py) of its
base's: it shares the base's weight tensors, adds the adapter unmerged, and has its own
worker, decode batch and prefix cache (``Engine.derived``). So it sits in the runtime's model
map like any model, and every route serves it unchanged; what marks it is ``parent`` (the
base's id) and ``revision`` (the adapter's sha256), which the chat and responses answers
carry as ``system_fingerprint: rev-<revision[:12]>`` and ``X-Psionic-Revision``.

Each model id has an active revision and at most one previous one, both loaded. Activating
(``PUT``) or rolling back replaces the map entry at once, on the event loop: a request picks
its model and queues its job in one step, so it runs wholly on the revision that was active
when it arrived, and the old revision's worker keeps running it. A revision dropped from the
pair (a third activation, or a delete) is retired: its worker finishes what it has queued,
then ends. The answer does not wait for that; the next activation does, so one retired
revision drains at a time (two, if two activations race). No request fails or changes
revision during a swap.

An adapter loads only onto the base it was trained on: ``psionic_adapter.json`` must name the
served base model and the sha256 of the base's weights file (fail closed: 409
``adapter_base_mismatch``); its weights must have the digest it records, and the one the
caller expects (400 ``adapter_digest_mismatch``). While an adapter is loaded its base's
weights stay in memory, even if the base itself is unloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from torch import Tensor

from psionic.admin_routes import TOKEN_HEADER, _locked
from psionic.arbiter import LockHeld
from psionic.checkpoints import step_name
from psionic.engine import Engine
from psionic.errors import ApiError, invalid
from psionic.lora import AdapterError, LoraSpec, base_weights_digest, lora_view, read_adapter_dir
from psionic.openai_routes import _check_fields, _json_body
from psionic.registry import ModelSpec
from psionic.runtime import Runtime, ServedModel
from psionic.train_jobs import TrainJobs
from psionic.train_routes import base_model
from psionic.worker import JobFailed, QueueFull, WorkerState

logger = logging.getLogger(__name__)

MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,255}$")


@dataclass
class Adapter:
    """One adapter model id: its active revision and the previous one (for rollback)."""

    active: ServedModel
    previous: ServedModel | None
    meta: dict[str, Any]  # the active revision's psionic_adapter.json
    previous_meta: dict[str, Any] | None

    def wire(self) -> dict[str, Any]:
        return {
            "id": self.active.spec.id,
            "base": self.active.parent,
            "revision": self.active.revision,
            "previous": self.previous.revision if self.previous else None,
            "step": self.meta.get("step"),
            "job": self.meta.get("job"),
        }


@dataclass(frozen=True)
class _Prepared:
    """An adapter a PUT names, read and checked, not yet loaded."""

    source: Path
    meta: dict[str, Any]  # its psionic_adapter.json
    spec: LoraSpec
    state: dict[str, Tensor]
    revision: str
    base: ServedModel


def _mismatch(message: str) -> ApiError:
    return ApiError(409, message, param="path", code="adapter_base_mismatch")


def _not_found(model_id: str) -> ApiError:
    return ApiError(404, f"No adapter model {model_id!r}.", code="model_not_found")


class Adapters:
    """The adapter models of one runtime; all changes happen on the event loop."""

    def __init__(self, runtime: Runtime, jobs: TrainJobs) -> None:
        self._runtime = runtime
        self._jobs = jobs
        self._adapters: dict[str, Adapter] = {}
        self._base_digests: dict[Path, str] = {}
        self._mutex = asyncio.Lock()  # one change at a time
        self._retiring: dict[asyncio.Future[None], ServedModel] = {}

    def list(self) -> list[dict[str, Any]]:
        return [a.wire() for a in self._adapters.values()]

    def _source(self, body: dict[str, Any]) -> Path:
        """The adapter directory a PUT names: a job's export at a step, or a path."""
        if "path" in body:
            if "job" in body or "step" in body:
                raise invalid("path", "Give either 'path' or 'job' and 'step'.")
            path = body["path"]
            if not isinstance(path, str) or not Path(path).is_dir():
                raise invalid("path", "'path' must be an adapter directory on this machine.")
            return Path(path)
        job, step = body.get("job"), body.get("step")
        if not isinstance(job, str):
            raise invalid("job", "Give 'job' and 'step' (a training job's export) or 'path'.")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise invalid("step", "'step' must be the step of one of the job's exports.")
        job_dir = self._jobs.job_dir(job)
        if job_dir is None:
            raise ApiError(404, f"No training job {job!r}.", param="job", code="job_not_found")
        export = job_dir / "exports" / step_name(step)
        if not export.is_dir():
            raise ApiError(
                404, f"Job {job!r} has no export at step {step}.", param="step", code="not_found"
            )
        return export

    async def _base_digest(self, path: Path) -> str:
        digest = self._base_digests.get(path)
        if digest is None:
            digest = await asyncio.to_thread(base_weights_digest, path)
            self._base_digests[path] = digest
        return digest

    async def put(self, model_id: str, body: dict[str, Any], token: str | None) -> Adapter:
        """Load the adapter a PUT names and make it the active revision of ``model_id``.

        ``previous`` (the same fields) names a revision to load beside it as the previous
        one, for a rollback, when ``model_id`` is new here (a daemon serving its promoted
        models again after a restart); it is never active, and ignored when the id is
        served already. It is best effort: a previous revision that cannot be read or
        loaded is logged and left out, and the answer's ``previous`` is null."""
        _check_fields(body, {"job", "step", "expect_digest", "path", "previous"})
        if not MODEL_ID.match(model_id):
            raise invalid("model", "An adapter model id is 1-256 letters, digits and ._:-")
        current = self._runtime.models.get(model_id)
        if current is not None and current.parent is None:
            raise ApiError(
                409, f"{model_id!r} is a base model.", param="model", code="model_id_taken"
            )
        keep = body.get("previous")
        if keep is not None and not isinstance(keep, dict):
            raise invalid("previous", "'previous' must be an object like the body, or null.")
        new = await self._prepare(body)
        await self._drained()  # outside the mutex: a rollback never waits for a drain
        async with self._mutex:
            adapter = self._adapters.get(model_id)
            if adapter is not None and adapter.active.parent != new.base.spec.id:
                raise _mismatch(f"{model_id!r} is an adapter of {adapter.active.parent!r}.")
            if adapter is not None and adapter.active.revision == new.revision:
                return adapter  # already active
            if (
                adapter is not None
                and adapter.previous
                and adapter.previous.revision == new.revision
            ):
                return self._rollback(adapter)
            served = await self._load(model_id, new, token)
            retired = None
            if adapter is None:
                adapter = Adapter(served, None, new.meta, None)
                if keep is not None:
                    await self._keep_previous(adapter, keep, token)
                self._adapters[model_id] = adapter
            else:
                retired = adapter.previous
                adapter.previous, adapter.previous_meta = adapter.active, adapter.meta
                adapter.active, adapter.meta = served, new.meta
                _demote(adapter.previous)
            self._runtime.models[model_id] = served  # requests from now on run on it
            if retired is not None:
                self._retire(retired)
        return adapter

    async def _prepare(self, body: dict[str, Any]) -> _Prepared:
        """Read and check the adapter a body names, before anything is served (fail closed):
        its digest, the one expected, and its base model and that base's weights."""
        expect = body.get("expect_digest")
        if expect is not None and not isinstance(expect, str):
            raise invalid("expect_digest", "'expect_digest' must be a sha256 or null.")
        source = self._source(body)
        try:
            meta, state = await asyncio.to_thread(read_adapter_dir, source)
            spec = LoraSpec.from_json(meta["spec"])
        except (AdapterError, ValueError, KeyError, TypeError) as exc:
            code = "adapter_digest_mismatch" if "digest" in str(exc) else "invalid_adapter"
            raise ApiError(400, f"The adapter cannot be read: {exc}", code=code) from exc
        revision = str(meta["adapter_digest"])
        if expect is not None and expect != revision:
            raise ApiError(
                400,
                f"The adapter's digest is {revision}, not the expected {expect}.",
                param="expect_digest",
                code="adapter_digest_mismatch",
            )
        base = self._base(meta)
        digest = await self._base_digest(base.spec.path)
        if meta.get("base_digest") != digest:
            raise _mismatch(
                f"The adapter was trained on base weights {meta.get('base_digest')}; "
                f"{base.spec.id!r} serves {digest}."
            )
        return _Prepared(source, meta, spec, state, revision, base)

    async def _keep_previous(
        self, adapter: Adapter, keep: dict[str, Any], token: str | None
    ) -> None:
        """Load the revision ``keep`` names as ``adapter``'s previous one (see ``put``)."""
        model_id = adapter.active.spec.id
        try:
            _check_fields(keep, {"job", "step", "expect_digest", "path"})
            old = await self._prepare(keep)
            if old.revision == adapter.active.revision:
                return
            if old.base.spec.id != adapter.active.parent:
                raise _mismatch(f"{model_id!r} is an adapter of {adapter.active.parent!r}.")
            previous = await self._load(model_id, old, token)
        except ApiError as exc:
            logger.warning("%s: the previous revision is not kept: %s", model_id, exc.message)
            return
        adapter.previous, adapter.previous_meta = previous, old.meta
        _demote(previous)

    def _base(self, meta: dict[str, Any]) -> ServedModel:
        name = meta.get("base_model")
        try:
            return base_model(self._runtime, name)
        except ApiError:
            # A trainer given a path records it; it names the served model with that path.
            for served in self._runtime.models.values():
                if served.parent is None and name == str(served.spec.path):
                    return base_model(self._runtime, served.spec.id)
            raise _mismatch(f"The adapter's base model {name!r} is not served here.") from None

    async def _load(self, model_id: str, new: _Prepared, token: str | None) -> ServedModel:
        """A started, loaded worker for the revision; the base is warmed first if needed (a
        load onto the device, so it honours the swap lock like ``/warm``)."""
        base, spec, state = new.base, new.spec, new.state
        if base.worker.state is not WorkerState.WARM:
            try:
                self._runtime.lock.check(token)
            except LockHeld as exc:
                raise _locked(exc.state) from exc
            await _warm(base)
        engine = base.worker.model
        if not isinstance(engine, Engine):
            raise ApiError(503, f"{base.spec.id!r} is not loaded.", type_="server_error")

        def loader() -> Engine:
            return engine.derived(lora_view(engine.model, spec, state))

        served = self._runtime.serve(
            ModelSpec(model_id, base.spec.kind, new.source),
            base.precision,
            loader,
            parent=base.spec.id,
            revision=new.revision,
        )
        served.worker.start()
        try:
            await _warm(served)
        except ApiError:
            await asyncio.to_thread(served.worker.retire)
            raise
        return served

    async def rollback(self, model_id: str) -> Adapter:
        async with self._mutex:
            adapter = self._adapters.get(model_id)
            if adapter is None:
                raise _not_found(model_id)
            if adapter.previous is None:
                raise ApiError(
                    409, f"{model_id!r} has no previous revision.", code="no_previous_revision"
                )
            return self._rollback(adapter)

    def _rollback(self, adapter: Adapter) -> Adapter:
        """The previous revision becomes active, and the active one previous (so a second
        rollback undoes the first)."""
        assert adapter.previous is not None and adapter.previous_meta is not None
        adapter.active, adapter.previous = adapter.previous, adapter.active
        adapter.meta, adapter.previous_meta = adapter.previous_meta, adapter.meta
        self._runtime.models[adapter.active.spec.id] = adapter.active
        _demote(adapter.previous)
        return adapter

    async def delete(self, model_id: str) -> None:
        async with self._mutex:
            adapter = self._adapters.pop(model_id, None)
            if adapter is None:
                raise _not_found(model_id)
            del self._runtime.models[model_id]  # new requests get 404 from now on
            for served in (adapter.active, adapter.previous):
                if served is not None:
                    self._retire(served)

    def _retire(self, served: ServedModel) -> None:
        """Retire a revision off the answer's path: its worker finishes the requests it has
        queued or running, then ends and drops the revision."""
        retiring = asyncio.get_running_loop().run_in_executor(None, served.worker.retire)
        self._retiring[retiring] = served
        retiring.add_done_callback(lambda done: self._retiring.pop(done, None))

    async def _drained(self) -> None:
        """Wait for the revisions retired before to finish draining (bounds the memory that
        revisions no longer served hold)."""
        if self._retiring:
            await asyncio.wait(list(self._retiring))

    def stop(self) -> None:
        """Stop the previous and the retiring revisions' workers (the active ones are the
        runtime's)."""
        for adapter in self._adapters.values():
            if adapter.previous is not None:
                adapter.previous.worker.stop()
        for served in list(self._retiring.values()):
            served.worker.stop()


def _demote(served: ServedModel) -> None:
    """A revision that is no longer active empties its prefix cache once its requests are
    done (a job on its worker; nobody waits for it): kept for rollback, it should not hold up
    to ``--prefix-cache-mb`` of keys and values meanwhile."""

    def clear(engine: Engine, cancelled: Any) -> Any:
        engine.clear_prefix()
        return iter(())

    with contextlib.suppress(QueueFull):  # a full queue: the cache stays (it is bounded)
        served.worker.submit(clear)


async def _warm(served: ServedModel) -> None:
    try:
        handle = served.worker.submit(lambda model, cancelled: iter(()))
    except QueueFull as exc:
        raise ApiError(
            429, "The model's queue is full.", type_="rate_limit_error", code="queue_full"
        ) from exc
    try:
        await handle.result()
    except JobFailed as exc:
        if isinstance(exc.__cause__, AdapterError):  # the adapter does not fit the base's shapes
            raise ApiError(
                400, f"The adapter cannot be served: {exc.__cause__}", code="invalid_adapter"
            ) from exc
        raise ApiError(
            503, f"Loading {served.spec.id!r} failed; see status.last_error.", type_="server_error"
        ) from exc


ADAPTERS = web.AppKey("adapters", Adapters)


def add_routes(app: web.Application, key: web.AppKey[Runtime], jobs: TrainJobs) -> None:
    adapters = Adapters(app[key], jobs)
    app[ADAPTERS] = adapters

    async def stop(app: web.Application) -> None:
        await asyncio.to_thread(adapters.stop)

    app.on_cleanup.append(stop)

    async def put(request: web.Request) -> web.Response:
        body = await _json_body(request)
        token = request.headers.get(TOKEN_HEADER)
        adapter = await adapters.put(request.match_info["model"], body, token)
        wire = adapter.wire()
        return web.json_response({k: wire[k] for k in ("id", "base", "revision", "previous")})

    async def rollback(request: web.Request) -> web.Response:
        adapter = await adapters.rollback(request.match_info["model"])
        wire = adapter.wire()
        return web.json_response({k: wire[k] for k in ("id", "base", "revision", "previous")})

    async def delete(request: web.Request) -> web.Response:
        model_id = request.match_info["model"]
        await adapters.delete(model_id)
        return web.json_response({"id": model_id, "deleted": True})

    async def list_adapters(request: web.Request) -> web.Response:
        return web.json_response({"adapters": adapters.list()})

    r = app.router
    r.add_get("/api/adapters", list_adapters)
    r.add_put("/api/adapters/{model}", put)
    r.add_post("/api/adapters/{model}/rollback", rollback)
    r.add_delete("/api/adapters/{model}", delete)
