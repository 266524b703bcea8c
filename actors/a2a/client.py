"""The entity as an A2A client (a2a-sdk's): fetch an agent's card and check its
signature when the card names an Ed25519 key, and send it a message and wait for the
task's end. Used by `entityctl a2a` and by the orchestrator's delegate_to_a2a_agent."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import httpx
from a2a.client import A2ACardResolver, A2AClientError, ClientConfig, create_client
from a2a.helpers.proto_helpers import get_artifact_text, get_message_text
from a2a.types import (
    AgentCard,
    Message,
    Part,
    Role,
    SendMessageRequest,
    Task,
    TaskState,
)

from . import card

MAX_ANSWER = 8000

# What a call to an agent raises when it did not answer as one.
# RecursionError: an answer nested too deeply for the SDK's JSON parser (a hostile agent).
UNREACHABLE = (A2AClientError, httpx.HTTPError, ValueError, RecursionError)


@dataclass(frozen=True)
class CardCheck:
    card: AgentCard
    signed: str  # "verified" | "unsigned" | "no key" | why it did not verify
    key: bytes | None = None

    @property
    def ok(self) -> bool:
        return self.signed in ("verified", "unsigned", "no key")


@dataclass(frozen=True)
class Outcome:
    ok: bool
    state: str
    text: str
    task_id: str = ""


def _headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


async def fetch_card(url: str, timeout: float = 30.0) -> CardCheck:
    """The agent card at `url` (its base), with the word on its signature: a card that
    names an Ed25519 key must be signed by it, else the check says why not."""
    async with httpx.AsyncClient(timeout=timeout) as http:
        found = await A2ACardResolver(http, url).get_agent_card()
    key = card.public_key_of(found)
    if key is None:
        return CardCheck(found, "unsigned" if not found.signatures else "no key")
    try:
        return CardCheck(found, "verified", card.verify(found, key))
    except ValueError as exc:
        return CardCheck(found, f"not verified: {exc}", key)


async def send(url: str, text: str, api_key: str = "", timeout: float = 600.0) -> Outcome:
    """Send `text` to the agent at `url` and wait for its answer (a message, or the
    task's end: its artifacts' text, else its status message)."""
    checked = await fetch_card(url, min(timeout, 30.0))
    if not checked.ok:
        return Outcome(False, "refused", f"the agent's card {checked.signed}")
    async with httpx.AsyncClient(headers=_headers(api_key), timeout=timeout) as http:
        client = await create_client(checked.card, ClientConfig(streaming=False,
                                                                 httpx_client=http))
        try:
            request = SendMessageRequest(message=Message(
                message_id=uuid.uuid4().hex, role=Role.ROLE_USER, parts=[Part(text=text)]))
            last: Task | Message | None = None
            async for event in client.send_message(request):
                if event.HasField("message"):
                    last = event.message
                elif event.HasField("task"):
                    last = event.task
        finally:
            await client.close()
    if isinstance(last, Message):
        return Outcome(True, "answered", get_message_text(last)[:MAX_ANSWER])
    if last is None:
        return Outcome(False, "no answer", "the agent sent nothing back")
    return _task_outcome(last)


def _task_outcome(task: Task) -> Outcome:
    state = TaskState.Name(task.status.state).removeprefix("TASK_STATE_").lower()
    text = "\n".join(get_artifact_text(a) for a in task.artifacts)
    if not text and task.status.HasField("message"):
        text = get_message_text(task.status.message)
    return Outcome(task.status.state == TaskState.TASK_STATE_COMPLETED, state,
                   text[:MAX_ANSWER], task.id)
