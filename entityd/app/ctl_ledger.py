"""entityctl's economy commands: balance, pay, ledger (and ledger verify). Each asks the
entity's own ledger actor. Exit codes: 0 done, 3 refused (an overdraft, a conflict, a bad
amount), 4 the LEDGER stream could not be reached (a payment then may or may not have
happened: run it again with the same --id, which pays at most once), 5 `ledger verify`
found a violation."""

from __future__ import annotations

import argparse
import datetime
from typing import Any

from actors.ledger.messages import (
    Balance,
    BalanceGet,
    LedgerEntries,
    LedgerGet,
    LedgerReport,
    LedgerResult,
    LedgerVerify,
    Pay,
    RatePeer,
    ReputationGet,
    ReputationInfo,
)
from actors.peer.outcomes import UNREACHABLE

from ..client import EntityClient
from .args import command
from .ctl_peers import EXIT_REFUSED, EXIT_UNREACHABLE, print_json

EXIT_VIOLATION = 5
VERIFY_TIMEOUT_S = 300.0
# A write waits for the stream up to this many times (a rival's entry, a retry): what
# entityctl waits for by default, in economy.append_timeout's.
WRITE_WAITS = 4


def add_commands(sub: Any) -> None:
    balance = command(sub, "balance", "Show the entity's balance (available and held "
                      "in escrow), or a peer's.", "entityctl balance entity-b --json")
    balance.add_argument("peer", nargs="?", default="")
    balance.add_argument("--json", action="store_true")
    balance.set_defaults(run=_balance)

    pay = command(sub, "pay", "Pay a peer at once from the entity's balance.",
                  'entityctl pay entity-b 25 --memo "for the review"')
    pay.add_argument("peer")
    pay.add_argument("amount", type=int)
    pay.add_argument("--memo", default="")
    pay.add_argument("--id", type=_entry_id, default=b"",
                     help="32 hex digits: the payment's idempotency key (the same id pays "
                     "at most once; default: a fresh one, printed)")
    pay.add_argument("--json", action="store_true")
    pay.set_defaults(run=_pay)

    ledger = command(sub, "ledger", "List the entity's ledger entries, newest first; "
                     "`ledger verify` replays and checks every chain.",
                     "entityctl ledger\nentityctl ledger verify")
    ledger.add_argument("action", nargs="?", choices=["verify"])
    ledger.add_argument("--peer", default="", help="only the entries with this peer")
    ledger.add_argument("--limit", type=int, default=50)
    ledger.add_argument("--json", action="store_true")
    ledger.set_defaults(run=_ledger)

    rate = command(sub, "rate", "Rate a peer 1..5 for a task whose escrow between you "
                   "was settled (once per task).", "entityctl rate entity-b TASK 5")
    rate.add_argument("peer")
    rate.add_argument("task")
    rate.add_argument("score", type=int, choices=range(1, 6), metavar="1..5")
    rate.add_argument("--note", default="")
    rate.add_argument("--json", action="store_true")
    rate.set_defaults(run=_rate)

    reputation = command(sub, "reputation", "Show what the ratings of the entity (or a "
                         "peer) say, weighed by the money behind them.",
                         "entityctl reputation entity-b")
    reputation.add_argument("peer", nargs="?", default="")
    reputation.add_argument("--json", action="store_true")
    reputation.set_defaults(run=_reputation)


def _entry_id(text: str) -> bytes:
    try:
        entry_id = bytes.fromhex(text)
    except ValueError:
        entry_id = b""
    if len(entry_id) != 16:
        raise argparse.ArgumentTypeError(f"{text!r} is not 32 hex digits")
    return entry_id


async def _balance(client: EntityClient, args: argparse.Namespace) -> int:
    balance: Balance = await client.ask("ledger", BalanceGet(args.peer), args.timeout)
    if args.json:
        print_json(balance)
    else:
        print(f"{balance.account}: {balance.available} available, {balance.held} held in "
              f"escrow ({balance.entries} entries on its chain)")
    return 0


async def _pay(client: EntityClient, args: argparse.Namespace) -> int:
    result: LedgerResult = await client.ask(
        "ledger", Pay(args.peer, args.amount, args.memo, args.id), _write_timeout(
            client, args))
    return _result_exit(result, args.json)


async def _rate(client: EntityClient, args: argparse.Namespace) -> int:
    result: LedgerResult = await client.ask(
        "ledger", RatePeer(args.peer, args.task, args.score, args.note), _write_timeout(
            client, args))
    return _result_exit(result, args.json)


def _write_timeout(client: EntityClient, args: argparse.Namespace) -> float:
    """--timeout if given, else long enough for the ledger actor's own waits."""
    if args.timeout_given:
        return float(args.timeout)
    return WRITE_WAITS * client.config.economy.append_timeout


async def _reputation(client: EntityClient, args: argparse.Namespace) -> int:
    known: ReputationInfo = await client.ask("ledger", ReputationGet(args.peer),
                                             args.timeout)
    if args.json:
        print_json(known)
    elif not known.tasks:
        print(f"{known.account}: no ratings yet")
    else:
        print(f"{known.account}: {known.score:.2f} of 5 from {known.tasks} rated task(s) "
              f"settled for {known.weight} in all")
    return 0


def _result_exit(result: LedgerResult, as_json: bool) -> int:
    if as_json:
        print_json(result)
    else:
        print(f"{result.code}: {result.text}" + (f"\nid {result.id}" if result.id else ""))
    if result.ok:
        return 0
    return EXIT_UNREACHABLE if result.code == UNREACHABLE else EXIT_REFUSED


async def _ledger(client: EntityClient, args: argparse.Namespace) -> int:
    if args.action == "verify":
        timeout = args.timeout if args.timeout_given else VERIFY_TIMEOUT_S
        report: LedgerReport = await client.ask("ledger", LedgerVerify(), timeout)
        if args.json:
            print_json(report)
        else:
            verdict = "ok" if report.ok else "VIOLATED"
            print(f"{verdict}: {report.entries} entries on {report.chains} chains, "
                  f"{report.supply} minted")
            for violation in report.violations:
                print(f"  {violation}")
            if report.ignored:
                print(f"ignored: {report.ignored} message(s) on the chains' subjects that "
                      "are no entries of their accounts (they change nothing):")
                for why in report.ignored_noted:
                    print(f"  {why}")
        return 0 if report.ok else EXIT_VIOLATION
    entries: LedgerEntries = await client.ask("ledger", LedgerGet(args.peer, args.limit),
                                              args.timeout)
    if args.json:
        print_json(entries.entries)
        return 0
    if not entries.entries:
        print("(no entries)")
    for e in entries.entries:
        when = datetime.datetime.fromtimestamp(e.ts / 1000, datetime.UTC)
        party = f" {e.counterparty}" if e.counterparty else ""
        amount = f" {e.amount}" if e.amount else ""
        print(f"{when:%Y-%m-%d %H:%M:%S} {e.account}#{e.seq} {e.typ}{amount}{party}"
              f"  {e.text}".rstrip())
    return 0
