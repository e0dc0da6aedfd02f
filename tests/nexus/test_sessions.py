"""Sessions over HTTP: a NIP-98 signature opens one, bound to the signer; everything a
signature can get wrong is 401, a replay 409, a body naming another key 403."""

from __future__ import annotations

import base64
import json

from support.nexus import NexusLab, Provider

from autopilotd.nostr.identity import generate_identity
from autopilotd.nostr.nip98 import auth_event


async def post(lab: NexusLab, request: tuple[str, bytes, dict[str, str]]) -> tuple[int, dict]:
    url, data, headers = request
    async with lab.http.post(url, data=data, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_a_signed_request_opens_a_session_bound_to_the_signer(lab: NexusLab) -> None:
    async with lab.running() as nexus:
        provider = Provider(lab, nexus, "p")
        status, answer = await post(lab, provider.session_request({"client_id": "desk-1"}))
        assert status == 200, answer
        assert answer["pubkey"] == provider.pubkey
        assert answer["token_type"] == "Bearer" and len(answer["access_token"]) == 64
        assert answer["nexus_pubkey"] == nexus.identity.pubkey_hex
        assert answer["relay_url"] == nexus.relay_url
        status, me = await lab.get(nexus.url + "/api/session/me", answer["access_token"])
        assert status == 200 and me["session_id"] == answer["session_id"]
        assert "access_token" not in me and "token_hash" not in me

        alias = provider.session_request({}, path="/api/session/desktop")
        status, answer = await post(lab, alias)
        assert status == 200 and answer["pubkey"] == provider.pubkey


async def test_each_auth_event_is_accepted_once(lab: NexusLab) -> None:
    async with lab.running() as nexus:
        request = Provider(lab, nexus, "p").session_request()
        assert (await post(lab, request))[0] == 200
        status, answer = await post(lab, request)
        assert (status, answer["error"]) == (409, "nip98_replayed")


async def test_a_stale_or_future_signature_is_refused(lab: NexusLab) -> None:
    async with lab.running() as nexus:
        provider = Provider(lab, nexus, "p")
        now = int(lab.clock.now())
        for created_at, expected in ((now - 61, 401), (now + 31, 401), (now - 59, 200)):
            status, answer = await post(lab, provider.session_request(created_at=created_at))
            assert status == expected, (created_at - now, answer)
        status, answer = await post(lab, provider.session_request(created_at=now + 29))
        assert status == 200, answer


async def test_a_signature_for_another_request_is_refused(lab: NexusLab) -> None:
    async with lab.running() as nexus:
        provider = Provider(lab, nexus, "p")
        wrong = [
            provider.session_request(url=nexus.url + "/api/session/me"),
            provider.session_request(url="http://elsewhere.example/api/session"),
            provider.session_request(method="GET"),
            provider.session_request({"client_id": "a"}, signed_body=b'{"client_id": "b"}'),
        ]
        for request in wrong:
            status, answer = await post(lab, request)
            assert (status, answer["error"]) == (401, "nip98_invalid"), answer
        url, data, headers = provider.session_request()
        del headers["Authorization"]
        assert (await post(lab, (url, data, headers)))[0] == 401


async def test_a_forged_signature_is_refused(lab: NexusLab) -> None:
    async with lab.running() as nexus:
        provider, victim = Provider(lab, nexus, "p"), generate_identity()
        url, data, _ = provider.session_request()
        event = json.loads(
            auth_event(provider.identity, url, "POST", data, int(lab.clock.now())).json
        )
        event["pubkey"] = victim.pubkey_hex  # claims the victim's key with the wrong signature
        header = "Nostr " + base64.b64encode(json.dumps(event).encode()).decode()
        status, answer = await post(lab, (url, data, {"Authorization": header}))
        assert (status, answer["error"]) == (401, "nip98_invalid")
        event["pubkey"] = provider.pubkey
        event["content"] = "tampered"  # the id no longer matches
        header = "Nostr " + base64.b64encode(json.dumps(event).encode()).decode()
        assert (await post(lab, (url, data, {"Authorization": header})))[0] == 401


async def test_a_body_naming_another_key_is_forbidden(lab: NexusLab) -> None:
    async with lab.running() as nexus:
        provider, other = Provider(lab, nexus, "p"), generate_identity()
        for field in ("bound_nostr_pubkey", "provider_nostr_pubkey", "pubkey"):
            status, answer = await post(lab, provider.session_request({field: other.pubkey_hex}))
            assert (status, answer["error"]) == (403, "pubkey_mismatch"), field


async def test_the_other_calls_need_a_live_bearer_token(lab: NexusLab) -> None:
    async with lab.running() as nexus:
        provider = Provider(lab, nexus, "p")
        poll = nexus.url + "/api/starter-demand/poll"
        assert (await lab.post(poll))[1]["error"] == "missing_bearer_token"
        assert (await lab.post(poll, token="0" * 64))[1]["error"] == "session_not_found"
        await provider.open_session()
        assert (await lab.post(poll, token=provider.token))[0] == 200
        lab.clock.advance(86_401)
        status, answer = await lab.post(poll, token=provider.token)
        assert (status, answer["error"]) == (401, "session_expired")
