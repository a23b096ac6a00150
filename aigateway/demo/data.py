"""What the demo sets up as an admin would, through the admin service (one transaction
each): an admin key, a user with a budget and a key, a second user whose key may use
only some models, a price for every model; and what Ollama says of its models."""

from __future__ import annotations

from dataclasses import dataclass

from ..admin import service
from ..db.store import Store
from ..records import Budget, Price
from ..upstreams.modelsync import fetch_models

# 5.00 a month for alice's keys together, with an alert at 80 %.
USER_BUDGET = Budget(5_000_000, "monthly", 80)
# Every model: 0.0001 a request, 0.50 per million prompt tokens, 1.50 per million generated.
PRICE = Price("*", per_request=100, per_million_input=500_000, per_million_output=1_500_000)
# bob's key may use only these: its request for another model is the traffic's refusal.
RESTRICTED_MODELS = ("llama3*",)


@dataclass(frozen=True)
class DemoKeys:
    admin: str  # admin/demo: the dashboard's sign-in, the admin API
    user: str  # alice/laptop
    restricted: str  # bob/phone, with an allow-list


async def set_up(database: str, ollama_url: str) -> DemoKeys:
    store = await Store.open(database)
    try:
        _, admin = await service.create_key(store, "admin", "demo", role="admin")
        await service.create_user(
            store, "alice", "alice@example.com", "the demo's user", USER_BUDGET
        )
        _, user = await service.create_key(store, "alice", "laptop")
        _, restricted = await service.create_key(
            store, "bob", "phone", models=list(RESTRICTED_MODELS)
        )
        await service.set_price(store, PRICE)
        # As ./gen_api_key_cli.py --sync-models does: the dashboard's models page then
        # shows each model's family, size and context length.
        await store.replace_models(await fetch_models(ollama_url, {}))
    finally:
        await store.close()
    return DemoKeys(admin, user, restricted)
