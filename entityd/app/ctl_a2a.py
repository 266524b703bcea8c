"""entityctl's A2A commands: make an API key for an A2A client of this entity, fetch an
A2A agent's card (its signature checked when it names an Ed25519 key), and send an agent
a message and print its answer. The exit code is 0 when it worked, 3 when the card did not
verify or the task did not complete (the reason on stderr)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import sys
from typing import Any

from ..client import EntityClient
from .args import command
from .ctl_peers import EXIT_REFUSED

KEY_ENV = "A2A_API_KEY"  # the key `send` presents, if the agent wants one


def add_commands(sub: Any) -> None:
    a2a = command(sub, "a2a", "The entity as an A2A agent and client: keys for its A2A "
                  "clients, and other agents' cards and tasks.",
                  'entityctl a2a key ci-bot\nentityctl a2a send http://127.0.0.1:8001/ "hi"')
    verbs = a2a.add_subparsers(dest="a2a_command", required=True, metavar="COMMAND")
    key = command(verbs, "key", "Make a new API key for an A2A client: prints the key once "
                  "(give it to the client) and the line for [a2a] api_keys (only its "
                  "sha256 is kept).", "entityctl a2a key ci-bot")
    key.add_argument("name", help="the client's name, as in [a2a] api_keys")
    key.set_defaults(run=_key)
    card = command(verbs, "card", "Fetch an A2A agent's card and check its signature when "
                   "it names an Ed25519 key.", "entityctl a2a card http://127.0.0.1:8001/")
    card.add_argument("url", help="the agent's base URL")
    card.add_argument("--json", action="store_true")
    card.set_defaults(run=_card)
    send = command(verbs, "send", f"Send an A2A agent a message and print its answer (the "
                   f"API key from ${KEY_ENV}, if it needs one).",
                   'entityctl a2a send http://127.0.0.1:8001/ "summarise the README"')
    send.add_argument("url", help="the agent's base URL")
    send.add_argument("text")
    send.add_argument("--json", action="store_true")
    send.set_defaults(run=_send)


async def _key(client: EntityClient, args: argparse.Namespace) -> int:
    key = secrets.token_urlsafe(32)
    digest = hashlib.sha256(key.encode()).hexdigest()
    print(f"API key for {args.name} (shown once; give it to the client):\n  {key}\n"
          f"Add to [a2a] in the entity's config and restart it:\n"
          f'  api_keys = {{ {args.name} = "{digest}" }}')
    return 0


def _unreachable(url: str, exc: Exception) -> int:
    print(f"entityctl: the A2A agent at {url} did not answer as one: {exc}"[:500],
          file=sys.stderr)
    return EXIT_REFUSED


async def _card(client: EntityClient, args: argparse.Namespace) -> int:
    from google.protobuf.json_format import MessageToDict

    from actors.a2a import client as a2a_client  # the SDK only for these commands

    try:
        checked = await a2a_client.fetch_card(args.url, args.timeout)
    except a2a_client.UNREACHABLE as exc:
        return _unreachable(args.url, exc)
    if args.json:
        print(json.dumps({"card": MessageToDict(checked.card), "signature": checked.signed,
                          "key": checked.key.hex() if checked.key else ""}, indent=2))
    else:
        found = checked.card
        print(f"{found.name}: {found.description}")
        for interface in found.supported_interfaces:
            print(f"  {interface.protocol_binding} {interface.url}")
        for skill in found.skills:
            print(f"  skill {skill.id}: {skill.description}")
        key = f" (Ed25519 {checked.key.hex()})" if checked.key else ""
        print(f"  signature: {checked.signed}{key}")
    if not checked.ok:
        print(f"entityctl: the card's signature is {checked.signed}", file=sys.stderr)
        return EXIT_REFUSED
    return 0


async def _send(client: EntityClient, args: argparse.Namespace) -> int:
    from actors.a2a import client as a2a_client

    try:
        outcome = await a2a_client.send(args.url, args.text, os.environ.get(KEY_ENV, ""),
                                        args.timeout)
    except a2a_client.UNREACHABLE as exc:
        return _unreachable(args.url, exc)
    if args.json:
        print(json.dumps({"ok": outcome.ok, "state": outcome.state, "text": outcome.text,
                          "task_id": outcome.task_id}))
    else:
        print(outcome.text)
    if not outcome.ok:
        print(f"entityctl: the task ended {outcome.state}", file=sys.stderr)
        return EXIT_REFUSED
    return 0
