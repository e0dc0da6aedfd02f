"""The public port: NIP-11, the relay behind it (writers authenticate with NIP-42 at the
front, reads are open), the rate limits that keep one client's flood from the others."""

from __future__ import annotations

import asyncio
import json

import aiohttp
from support.nexus import NexusLab, Provider

from autopilotd.nostr.identity import generate_identity
from autopilotd.nostr.nip42 import KIND_CLIENT_AUTH
from autopilotd.nostr.nip90 import build_handler, sign


async def test_nip11_and_a_short_page(lab: NexusLab) -> None:
    async with lab.running() as nexus:
        headers = {"Accept": "application/nostr+json"}
        async with lab.http.get(nexus.url + "/", headers=headers) as resp:
            info = await resp.json(content_type="application/nostr+json")
            assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert info["pubkey"] == nexus.identity.pubkey_hex
        assert {42, 89, 90, 98} <= set(info["supported_nips"])
        async with lab.http.get(nexus.url + "/") as resp:
            assert resp.status == 200 and "/stats" in await resp.text()


async def test_writers_authenticate_at_the_front_with_nip42(lab: NexusLab) -> None:
    async with lab.running() as nexus, lab.http.ws_connect(nexus.relay_url) as ws:
        identity = generate_identity()
        handler = json.loads(build_handler(identity, [5050], d_tag="x").json)

        async def send(*frame: object) -> None:
            await ws.send_str(json.dumps(list(frame)))

        async def receive() -> list:
            return json.loads((await ws.receive(timeout=10)).data)

        await send("REQ", "s1", {"kinds": [1]})  # reading needs no authentication
        assert await receive() == ["EOSE", "s1"]
        await send("EVENT", handler)
        kind, challenge = await receive()
        assert kind == "AUTH"
        assert await receive() == [
            "OK",
            handler["id"],
            False,
            "auth-required: authenticate to write",
        ]

        def auth(relay: str, answer: str) -> dict:
            tags = [["relay", relay], ["challenge", answer]]
            return json.loads(sign(identity, KIND_CLIENT_AUTH, "", tags, int(lab.clock.now())).json)

        for wrong in (auth("ws://127.0.0.1:1/", challenge), auth(nexus.relay_url, "other")):
            await send("AUTH", wrong)
            ok = await receive()
            assert ok[:3] == ["OK", wrong["id"], False] and ok[3].startswith("auth-required")
        good = auth(nexus.relay_url, challenge)
        await send("AUTH", good)
        assert await receive() == ["OK", good["id"], True, ""]
        await send("EVENT", handler)
        assert await receive() == ["OK", handler["id"], True, ""]


async def test_a_flood_is_refused_while_another_client_is_served(lab: NexusLab) -> None:
    async with lab.running() as nexus:
        hostile, other = Provider(lab, nexus, "hostile"), Provider(lab, nexus, "other")
        await hostile.open_session()
        session = nexus.url + "/api/session"
        poll = nexus.url + "/api/starter-demand/poll"
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))  # another address
        async with aiohttp.ClientSession(connector=connector) as elsewhere:

            async def flood() -> list[int]:
                answers = []
                for n in range(60):
                    url = session if n % 2 else poll
                    answers.append((await lab.post(url, token=hostile.token))[0])
                return answers

            async def served() -> list[int]:
                await other.open_session(http=elsewhere)
                return [
                    (await lab.post(poll, token=other.token, http=elsewhere))[0] for _ in range(3)
                ]

            flooded, answered = await asyncio.gather(flood(), served())
        assert flooded.count(429) >= 40, flooded
        assert answered == [200, 200, 200]
        assert (await lab.post(poll, token=hostile.token))[1]["error"] == "rate_limited"
        lab.clock.advance(10)  # the buckets refill with time
        assert (await lab.post(poll, token=hostile.token))[0] == 200
