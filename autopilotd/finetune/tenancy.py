"""Tenants of the fine-tuning API, their keys and quotas, and their training files.

A tenant's key is `sk-ft-` and 32 random bytes (urlsafe base64), shown once; only its sha256
is kept, and a key is compared with the stored hash in constant time. A file is kept only once
every line passes the daemon's own check (finetune/data.py); psionic counts its tokens later,
when a job names its base model.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from typing import Any

from autopilotd.errors import AuthFailed, Conflict, NotFound, UserError
from autopilotd.finetune.data import check_jsonl, summary
from autopilotd.runtime.configs import LiveConfig
from autopilotd.runtime.events import EventBus
from autopilotd.store.finetune import FineTuning
from autopilotd.store.finetune_records import FtFile, FtJob, Tenant

NETWORK_TENANT = "network"
TENANT_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
PURPOSE = "fine-tune"
QUOTAS = ("active_jobs", "jobs", "training_tokens", "storage_bytes")


class QuotaExceeded(Conflict):
    """The tenant's quota does not allow this (the message says which and how much)."""


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Tenancy:
    def __init__(self, records: FineTuning, events: EventBus, config: LiveConfig) -> None:
        self.records = records
        self._events = events
        self._config = config
        self.counting = asyncio.Lock()  # held from a quota's check to the write it allows

    async def create(
        self, tenant_id: str, quotas: Mapping[str, int | None] | None = None
    ) -> tuple[Tenant, str]:
        """A new tenant and its API key (returned this once; only its hash is kept)."""
        if not TENANT_ID.fullmatch(tenant_id) or tenant_id == NETWORK_TENANT:
            raise UserError(
                "a tenant id is 1 to 32 of a-z, 0-9 and -, starting with a letter or digit "
                f"(and not {NETWORK_TENANT!r}, which is the network's)"
            )
        if await self.records.tenant(tenant_id) is not None:
            raise Conflict(f"tenant {tenant_id!r} exists already")
        key = "sk-ft-" + secrets.token_urlsafe(32)
        tenant = await self.records.add_tenant(
            tenant_id, key_hash(key), key[:9] + "…", self._quotas(quotas)
        )
        self._events.publish("finetune.tenant_created", tenant=tenant_id)
        return tenant, key

    def _quotas(self, given: Mapping[str, int | None] | None) -> dict[str, int]:
        cfg = self._config.current
        out = {q: int(getattr(cfg, f"finetune_quota_{q}")) for q in QUOTAS}
        for name, value in (given or {}).items():
            if value is not None:
                if value < 0:
                    raise UserError(f"quota {name} must not be negative")
                out[name] = value
        return out

    async def authenticate(self, key: str) -> Tenant:
        found = await self.records.tenant_by_key_hash(key_hash(key)) if key else None
        if found is None or not hmac.compare_digest(found[1], key_hash(key)):
            raise AuthFailed("Incorrect API key provided")
        return found[0]

    async def get(self, tenant_id: str) -> Tenant:
        found = await self.records.tenant(tenant_id)
        if found is None:
            raise NotFound(f"no tenant {tenant_id!r}; finetune.tenant.list shows them")
        return found

    async def listing(self) -> list[dict[str, Any]]:
        """Every tenant with the start of its key (while it is live), quotas and usage."""
        out = []
        for t in await self.records.tenants():
            out.append(
                {
                    "id": t.id,
                    "key": t.key_hint if t.revoked_at is None else None,
                    "created_at": t.created_at,
                    "revoked_at": t.revoked_at,
                    "quotas": t.quotas(),
                    "usage": await self.records.usage(t.id),
                }
            )
        return out

    async def revoke(self, tenant_id: str) -> Tenant:
        """Revoke the tenant's key: every call with it is refused from now on. Its files,
        jobs and models stay (a running job runs to its end)."""
        await self.get(tenant_id)
        await self.records.revoke_tenant(tenant_id)
        self._events.publish("finetune.tenant_revoked", tenant=tenant_id)
        return await self.get(tenant_id)

    async def set_quotas(self, tenant_id: str, quotas: Mapping[str, int | None]) -> Tenant:
        await self.get(tenant_id)
        changes = {k: v for k, v in quotas.items() if v is not None}
        for name, value in changes.items():
            if name not in QUOTAS or value < 0:
                raise UserError(f"quota {name} must be one of {', '.join(QUOTAS)}, not negative")
        if changes:
            await self.records.set_quotas(tenant_id, changes)
        return await self.get(tenant_id)

    async def check_quota(self, tenant: Tenant, name: str, more: int, what: str) -> None:
        used = (await self.records.usage(tenant.id))[name]
        limit = tenant.quotas()[name]
        if used + more > limit:
            raise QuotaExceeded(
                f"quota exceeded: {what} would make {name.replace('_', ' ')} {used + more}, "
                f"above this tenant's quota of {limit}",
                data={"code": "quota_exceeded", "param": None},
            )

    # -- files ---------------------------------------------------------------------------

    @property
    def file_max_bytes(self) -> int:
        return self._config.current.finetune_file_max_bytes

    async def upload(self, tenant: Tenant, filename: str, purpose: str, data: bytes) -> FtFile:
        """Keep a training file once it passes the daemon's check of every line; a file with
        a bad line is refused whole, with its receipt (every bad line and why)."""
        if purpose != PURPOSE:
            raise UserError(
                f"purpose {purpose!r} is not supported here: only {PURPOSE!r}",
                data={"code": "invalid_purpose", "param": "purpose"},
            )
        cap = self._config.current.finetune_file_max_bytes
        if len(data) > cap:
            raise UserError(
                f"the file is {len(data)} bytes, above the limit of {cap} bytes",
                data={"code": "file_too_large", "param": "file"},
            )
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise UserError(
                "the file is not UTF-8 text", data={"code": "invalid_file", "param": "file"}
            ) from None
        receipt = check_jsonl(text)
        if receipt.rejected or not receipt.accepted:
            raise UserError(
                f"invalid training file: {summary(receipt) or 'it has no examples'}",
                data={"code": "invalid_file", "param": "file", "receipt": receipt.to_json()},
            )
        async with self.counting:
            await self.check_quota(tenant, "storage_bytes", len(data), "this file")
            found = await self.records.add_file(
                "file-" + secrets.token_hex(12),
                tenant.id,
                filename,
                purpose,
                text,
                receipt.to_json(),
            )
        self._events.publish("finetune.file_uploaded", tenant=tenant.id, file_id=found.id)
        return found

    async def file(self, tenant: Tenant | None, file_id: str, param: str = "file_id") -> FtFile:
        found = await self.records.file(file_id)
        if found is None or (tenant is not None and found.tenant_id != tenant.id):
            raise NotFound(
                f"No such File object: {file_id}", data={"code": "file_not_found", "param": param}
            )
        return found

    async def job(self, tenant: Tenant | None, job_id: str) -> FtJob:
        found = await self.records.find_job(job_id)
        if found is None or (tenant is not None and found.tenant_id != tenant.id):
            raise NotFound(
                f"No such fine-tuning job: {job_id}",
                data={"code": "fine_tune_not_found", "param": "fine_tuning_job_id"},
            )
        return found

    async def delete_file(self, tenant: Tenant, file_id: str) -> FtFile:
        found = await self.file(tenant, file_id)
        await self.records.delete_file(found.id)
        return found

    async def network(self) -> Tenant:
        """The network's own tenant (jobs sold over NIP-90), made on first use, keyless."""
        found = await self.records.tenant(NETWORK_TENANT)
        if found is None:
            found = await self.records.add_tenant(NETWORK_TENANT, None, "none", self._quotas(None))
        return found
