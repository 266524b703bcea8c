"""Writes the ledger's test vectors (PROTOCOL.md §16.6: the JSON files beside this script).

`python -m protocol.vectors.ledger.generate --write` writes them, `--check` fails when the
committed files differ. Entries are built from msgpack and PyNaCl with the helpers of
protocol/vectors/generate.py and hashed here with hashlib, following PROTOCOL.md rather
than calling `protocol.ledger`, and each step's outcome and the balances after the last
are written here by hand from §16's rules, so that the vectors check the implementation
instead of restating it. Fixed seeds, ids and times make the output the same on every run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from .. import generate as g

HERE = Path(__file__).resolve().parent
TREASURY = SigningKey(hashlib.sha256(b"entityd/v1 test vector key treasury").digest())
ACCOUNTS = {"alpha": g.ALPHA, "beta": g.BETA, "gamma": g.GAMMA}
GENESIS = bytes(32)
T0 = g.NOW_MS - 3_600_000  # the first entries: an hour before the reader's now
DAY = 86_400_000


def at(seconds: int) -> int:
    return T0 + seconds * 1000


class Chains:
    """The entries of one vector, each placed on its account's chain as §16.1 says (next
    seq, prev the SHA-256 of the body before) unless a step says otherwise, and the steps
    that run them."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.heads: dict[str, tuple[int, bytes, int]] = {}  # account: seq, hash, ts
        self.results: dict[str, dict[str, Any]] = {}
        self.wires: dict[str, bytes] = {}
        self.steps: list[dict[str, Any]] = []

    def id(self, name: str) -> bytes:
        return g.msg_id(f"ledger {self.tag} {name}")

    def seal(self, account: str, typ: str, fields: dict[str, Any], *, name: str, ts: int,
             key: SigningKey | None = None, seq: int | None = None,
             prev: bytes | None = None, src: str | None = None) -> tuple[bytes, bytes]:
        last_seq, last_hash, _ = self.heads.get(account, (0, GENESIS, 0))
        payload = {"seq": last_seq + 1 if seq is None else seq,
                   "prev": last_hash if prev is None else prev, **fields}
        address = f"{account}/ledger"
        body = g.pack(g.fields(id=self.id(name), src=src or address, dst=address,
                               subj=f"ledger.{account}", typ=typ, ts=ts, corr=None,
                               enc=False, payload=payload))
        if key is None:
            key = TREASURY if typ == "mint" else ACCOUNTS[account]
        return g.wire(key, body), body

    def ok(self, note: str, account: str, typ: str, fields: dict[str, Any], *, name: str,
           ts: int, original: str | None = None, **how: Any) -> None:
        """An entry that is applied (or, with `original`, appended again under that
        entry's id: a link of the chain whose result is the original's)."""
        wire, body = self.seal(account, typ, fields, name=name, ts=ts, **how)
        seq = self.heads.get(account, (0, GENESIS, 0))[0] + 1
        self.heads[account] = (seq, hashlib.sha256(body).digest(), ts)
        result = {"account": account, "id": self.id(name).hex(), "typ": typ, "seq": seq,
                  "hash": self.heads[account][1].hex(), "ts": ts}
        if original is None:
            self.results[name] = result
        self.wires[name] = wire
        self._step(note, account, wire, how.get("key"), {"ok": self.results[original or name]})

    def again(self, note: str, account: str, name: str) -> None:
        """The wire of entry `name` delivered again: nothing happens, its result comes."""
        self._step(note, account, self.wires[name], None, {"ok": self.results[name]})

    def refused(self, note: str, reason: str, account: str, typ: str,
                fields: dict[str, Any], *, name: str, ts: int, **how: Any) -> None:
        wire, _ = self.seal(account, typ, fields, name=name, ts=ts, **how)
        self._step(note, account, wire, how.get("key"), {"error": reason})

    def _step(self, note: str, account: str, wire: bytes, key: SigningKey | None,
              expect: dict[str, Any]) -> None:
        step: dict[str, Any] = {"note": note, "subject": f"ledger.{account}"}
        if key is not None:
            step["signer_seed"] = bytes(key).hex()
        self.steps.append({**step, "wire": wire.hex(), "expect": expect})


def vector(chains: Chains, description: str, after: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": chains.tag,
        "description": description,
        "accounts": [{"account": name, "public_key": g.pk(key).hex(), "seed": bytes(key).hex()}
                     for name, key in ACCOUNTS.items()],
        "operators": [{"name": "treasury", "public_key": g.pk(TREASURY).hex(),
                       "seed": bytes(TREASURY).hex()}],
        "now_ms": g.NOW_MS,
        "steps": chains.steps,
        "after": after,
    }


def balances(**accounts: tuple[int, int]) -> dict[str, Any]:
    return {name: {"available": available, "held": held}
            for name, (available, held) in accounts.items()}


def mint(chains: Chains, account: str, amount: int, ts: int, name: str = "mint") -> None:
    chains.ok(f"treasury mints {amount} to {account}", account, "mint",
              {"account": account, "amount": amount, "memo": "allowance"}, name=name, ts=ts)


def pay(to: str, amount: int, memo: str = "") -> dict[str, Any]:
    return {"to": to, "amount": amount, "memo": memo}


def hold(to: str, amount: int, expires_at: int, task: str) -> dict[str, Any]:
    return {"to": to, "amount": amount, "expires_at": expires_at, "task": task}


# ---- the vectors ---------------------------------------------------------------------


def reject_broken_chain() -> dict[str, Any]:
    c = Chains("reject_broken_chain")
    mint(c, "alpha", 1000, at(0))
    first_hash = c.heads["alpha"][1]
    c.refused("seq 3 where 2 is next: an entry dropped", "broken_chain", "alpha",
              "transfer", pay("beta", 10), name="t3-early", ts=at(2), seq=3)
    c.refused("prev is not the hash of entry 1", "broken_chain", "alpha", "transfer",
              pay("beta", 10), name="t2-bad-prev", ts=at(1), prev=bytes(range(32)))
    c.refused("ts older than entry 1's", "broken_chain", "alpha", "transfer",
              pay("beta", 10), name="t2-backdated", ts=at(0) - 1)
    c.refused("a second entry 1 (a fork at the start)", "broken_chain", "alpha", "transfer",
              pay("beta", 10), name="t1-fork", ts=at(1), seq=1, prev=GENESIS)
    c.ok("entry 2, in place", "alpha", "transfer", pay("beta", 100, "rent"), name="t2",
         ts=at(1))
    c.refused("another entry 2 (a fork: the chain holds one already)", "broken_chain",
              "alpha", "transfer", pay("gamma", 100), name="t2-fork", ts=at(2), seq=2,
              prev=first_hash)
    wire = c.wires["t2"]
    c.refused("prev is the SHA-256 of entry 2's whole wire, not of its body",
              "broken_chain", "alpha", "transfer", pay("beta", 10), name="t3-wire-hash",
              ts=at(2), prev=hashlib.sha256(wire).digest())
    c.ok("entry 3, in place", "alpha", "transfer", pay("gamma", 50), name="t3", ts=at(2))
    return vector(c, "An account's chain: each entry's seq is the next, its prev the SHA-256 "
                  "of the body of the entry before (32 zero bytes for the first), its ts not "
                  "older; anything else is broken_chain and changes nothing.",
                  {"supply": 1000, "balances": balances(alpha=(850, 0), beta=(100, 0),
                                                        gamma=(50, 0))})


def reject_wrong_signer() -> dict[str, Any]:
    c = Chains("reject_wrong_signer")
    mint(c, "alpha", 500, at(0))
    c.refused("a transfer on alpha's chain signed by beta's key", "wrong_signer", "alpha",
              "transfer", pay("beta", 500), name="by-beta", ts=at(1), key=g.BETA)
    c.refused("a transfer on alpha's chain signed by the operator's key", "wrong_signer",
              "alpha", "transfer", pay("beta", 500), name="by-treasury", ts=at(1),
              key=TREASURY)
    c.refused("a mint signed by alpha's own key", "wrong_signer", "alpha", "mint",
              {"account": "alpha", "amount": 10**6}, name="self-mint", ts=at(1),
              key=g.ALPHA)
    c.refused("a mint on beta's chain signed by beta's key", "wrong_signer", "beta", "mint",
              {"account": "beta", "amount": 10**6}, name="beta-mint", ts=at(1), key=g.BETA)
    c.refused("a transfer signed by a key nobody trusts", "unknown_key", "alpha",
              "transfer", pay("beta", 500), name="by-mallory", ts=at(1), key=g.MALLORY)
    c.refused("beta's own transfer put on alpha's chain (src beta/ledger)", "wrong_sender",
              "alpha", "transfer", pay("gamma", 500), name="beta-src", ts=at(1),
              key=g.BETA, src="beta/ledger")
    c.ok("alpha's transfer, signed by alpha", "alpha", "transfer", pay("beta", 200),
         name="t2", ts=at(1))
    return vector(c, "Who signs: an account's own key for its entries, an operator key for "
                  "a mint; any other trusted key is wrong_signer, an untrusted one "
                  "unknown_key, an entry claiming another account's src wrong_sender.",
                  {"supply": 500, "balances": balances(alpha=(300, 0), beta=(200, 0))})


def reject_overdraft() -> dict[str, Any]:
    c = Chains("reject_overdraft")
    mint(c, "alpha", 100, at(0))
    c.ok("pay 60 of 100", "alpha", "transfer", pay("beta", 60), name="t2", ts=at(1))
    c.refused("pay 41 of 40", "overdraft", "alpha", "transfer", pay("beta", 41),
              name="t3-over", ts=at(2))
    c.refused("hold 41 of 40", "overdraft", "alpha", "hold",
              hold("beta", 41, at(0) + DAY, "t-big"), name="h3-over", ts=at(2))
    c.ok("hold 30 of 40", "alpha", "hold", hold("beta", 30, at(0) + DAY, "t-1"), name="h3",
         ts=at(2))
    c.refused("pay 11 of the 10 not held", "overdraft", "alpha", "transfer",
              pay("gamma", 11), name="t4-over", ts=at(3))
    c.ok("pay the last 10", "alpha", "transfer", pay("gamma", 10), name="t4", ts=at(3))
    c.refused("beta pays 61 of the 60 it received", "overdraft", "beta", "transfer",
              pay("gamma", 61), name="b1-over", ts=at(4))
    c.ok("beta pays 60 of the 60 it received", "beta", "transfer", pay("gamma", 60),
         name="b1", ts=at(4))
    return vector(c, "No account below zero: a transfer or hold for more than the available "
                  "balance (received transfers counted, held amounts not) is overdraft.",
                  {"supply": 100, "balances": balances(alpha=(0, 30), beta=(0, 0),
                                                       gamma=(70, 0))})


def reject_hold_resolved() -> dict[str, Any]:
    c = Chains("reject_hold_resolved")
    mint(c, "alpha", 100, at(0))
    deadline = at(0) + DAY
    c.ok("hold 50 for beta", "alpha", "hold", hold("beta", 50, deadline, "t-1"), name="h1",
         ts=at(1))
    c.ok("post 30 of it: 30 to beta, 20 back to alpha", "alpha", "post",
         {"hold": c.id("h1"), "amount": 30}, name="p1", ts=at(2))
    c.refused("post it again (another entry id)", "hold_resolved", "alpha", "post",
              {"hold": c.id("h1"), "amount": 20}, name="p1-again", ts=at(3))
    c.refused("void it after its post", "hold_resolved", "alpha", "void",
              {"hold": c.id("h1")}, name="v1", ts=at(3))
    c.ok("hold 20 for gamma", "alpha", "hold", hold("gamma", 20, deadline, "t-2"), name="h2",
         ts=at(3))
    c.ok("void it: 20 back to alpha", "alpha", "void", {"hold": c.id("h2"), "reason": "no"},
         name="v2", ts=at(4))
    c.refused("void it again", "hold_resolved", "alpha", "void", {"hold": c.id("h2")},
              name="v2-again", ts=at(5))
    c.refused("post it after its void", "hold_resolved", "alpha", "post",
              {"hold": c.id("h2"), "amount": 20}, name="p2", ts=at(5))
    c.refused("post a hold the chain does not hold", "unknown_hold", "alpha", "post",
              {"hold": c.id("nowhere"), "amount": 1}, name="p-unknown", ts=at(5))
    c.refused("void a hold of another chain (alpha's hold ids are not beta's)", "unknown_hold",
              "beta", "void", {"hold": c.id("h2")}, name="v-beta", ts=at(5))
    c.ok("hold 10 for beta", "alpha", "hold", hold("beta", 10, deadline, "t-3"), name="h3",
         ts=at(5))
    c.refused("post 11 of a hold of 10", "bad_entry", "alpha", "post",
              {"hold": c.id("h3"), "amount": 11}, name="p3-over", ts=at(6))
    return vector(c, "A hold resolves at most once: a post or void of a hold already posted "
                  "or voided is hold_resolved, of no hold of the chain unknown_hold; a post "
                  "pays at most the amount held.",
                  {"supply": 100, "balances": balances(alpha=(60, 10), beta=(30, 0))})


def reject_hold_expired() -> dict[str, Any]:
    c = Chains("reject_hold_expired")
    mint(c, "alpha", 100, at(0))
    c.ok("hold 40 for beta until at(10)", "alpha", "hold", hold("beta", 40, at(10), "t-1"),
         name="h1", ts=at(1))
    c.ok("hold 50 for beta until at(20)", "alpha", "hold", hold("beta", 50, at(20), "t-2"),
         name="h2", ts=at(2))
    c.refused("a hold that expires before it is made", "bad_entry", "alpha", "hold",
              hold("beta", 5, at(2) - 1, "t-0"), name="h0", ts=at(2))
    c.ok("post h1 at its deadline to the ms: in time", "alpha", "post",
         {"hold": c.id("h1"), "amount": 40}, name="p1", ts=at(10))
    c.refused("post h2 1 ms after its deadline", "hold_expired", "alpha", "post",
              {"hold": c.id("h2"), "amount": 50}, name="p2", ts=at(20) + 1)
    c.ok("pay 60: h2's 50 are available again once an entry's ts passes its deadline",
         "alpha", "transfer", pay("gamma", 60), name="t1", ts=at(21))
    c.ok("void h2 after its deadline: it records the release, which changes nothing more",
         "alpha", "void", {"hold": c.id("h2"), "reason": "deadline"}, name="v2", ts=at(22))
    c.refused("void h2 again", "hold_resolved", "alpha", "void", {"hold": c.id("h2")},
              name="v2-again", ts=at(23))
    c.ok("beta holds 30 for gamma until at(100): still pending on the chain, released "
         "for a reader whose now is past at(100)", "beta", "hold",
         hold("gamma", 30, at(100), "t-3"), name="h3", ts=at(30))
    return vector(c, "Expiry is read from entry timestamps: a post whose ts is past the "
                  "hold's expires_at is hold_expired; an entry whose ts is past it finds the "
                  "amount released, and a void may still record it. A reader's balances at "
                  "now_ms count a pending hold whose deadline now_ms has passed as released.",
                  {"supply": 100, "balances": balances(alpha=(0, 0), beta=(40, 0),
                                                       gamma=(60, 0))})


def reject_conflict() -> dict[str, Any]:
    c = Chains("reject_conflict")
    mint(c, "alpha", 100, at(0))
    c.ok("pay beta 25 under an id the caller chose", "alpha", "transfer",
         pay("beta", 25, "invoice 7"), name="pay-7", ts=at(1))
    c.again("the same wire again: nothing happens, the result is the first one's", "alpha",
            "pay-7")
    c.ok("the same id and body sealed again at entry 3 (a retry appended): a link of the "
         "chain, no second payment, the original result", "alpha", "transfer",
         pay("beta", 25, "invoice 7"), name="pay-7", ts=at(2), original="pay-7")
    c.refused("the same id with another amount", "conflict", "alpha", "transfer",
              pay("beta", 26, "invoice 7"), name="pay-7", ts=at(3))
    c.refused("the same id as another kind", "conflict", "alpha", "hold",
              hold("beta", 25, at(0) + DAY, "invoice 7"), name="pay-7", ts=at(3))
    c.ok("entry 4 under a new id", "alpha", "transfer", pay("beta", 5), name="pay-8",
         ts=at(3))
    return vector(c, "An entry id is an idempotency key: the same id and body again is no "
                  "second effect and gives the original result; the same id with another "
                  "body is conflict.",
                  {"supply": 100, "balances": balances(alpha=(70, 0), beta=(30, 0))})


def reject_rating() -> dict[str, Any]:
    c = Chains("reject_rating")
    mint(c, "alpha", 100, at(0))
    c.ok("alpha holds 40 for beta's task t-1", "alpha", "hold",
         hold("beta", 40, at(0) + DAY, "t-1"), name="h1", ts=at(1))
    c.refused("alpha rates beta before the escrow settles", "not_settled", "alpha", "rate",
              {"peer": "beta", "task": "t-1", "score": 5}, name="r-early", ts=at(2))
    c.ok("alpha accepts the work and posts 40", "alpha", "post",
         {"hold": c.id("h1"), "amount": 40}, name="p1", ts=at(2))
    c.ok("alpha rates beta 4 for t-1", "alpha", "rate",
         {"peer": "beta", "task": "t-1", "score": 4, "note": "good"}, name="r1", ts=at(3))
    c.refused("alpha rates beta for t-1 again", "duplicate_rating", "alpha", "rate",
              {"peer": "beta", "task": "t-1", "score": 1}, name="r1-again", ts=at(4))
    c.ok("beta, the payee, rates alpha 5 for t-1", "beta", "rate",
         {"peer": "alpha", "task": "t-1", "score": 5}, name="r2", ts=at(4))
    c.refused("gamma, no party to t-1, rates beta", "not_settled", "gamma", "rate",
              {"peer": "beta", "task": "t-1", "score": 1}, name="r3", ts=at(4))
    c.refused("alpha rates beta for a task it never paid", "not_settled", "alpha", "rate",
              {"peer": "beta", "task": "t-2", "score": 5}, name="r4", ts=at(5))
    c.refused("alpha rates itself", "bad_entry", "alpha", "rate",
              {"peer": "alpha", "task": "t-1", "score": 5}, name="r5", ts=at(5))
    c.refused("a score of 6", "bad_entry", "beta", "rate",
              {"peer": "alpha", "task": "t-1", "score": 6}, name="r6", ts=at(5))
    return vector(c, "Ratings only from a party of a settled escrow for that task, of the "
                  "other party, once each; a score outside 1..5 or of oneself is bad_entry. "
                  "Each rating weighs the amount its escrow settled.",
                  {"supply": 100, "balances": balances(alpha=(60, 0), beta=(40, 0)),
                   "reputation": {"alpha": {"tasks": 1, "weight": 40, "weighted": 200},
                                  "beta": {"tasks": 1, "weight": 40, "weighted": 160}}})


def bound_sums() -> dict[str, Any]:
    c = Chains("bound_sums")
    cap, half = 2**63 - 1, 2**62  # 16.5's bound; a supply within it
    mint(c, "alpha", half, at(0))
    for n, (payer, payee) in enumerate((("alpha", "beta"), ("beta", "alpha"),
                                        ("alpha", "beta"))):
        c.ok(f"{payer} holds 2^62 for {payee}'s task t-1", payer, "hold",
             hold(payee, half, at(0) + DAY, "t-1"), name=f"h{n}", ts=at(1 + n))
        c.ok(f"{payer} posts it: alpha to beta for t-1 has now settled "
             f"{'2^63, kept as 2^63 - 1' if n == 2 else '2^62'}" if payer == "alpha" else
             f"{payer} posts it", payer, "post", {"hold": c.id(f"h{n}"), "amount": half},
             name=f"p{n}", ts=at(1 + n))
    c.ok("beta rates alpha 5 for t-1: 2^62 + (2^63 - 1) settled, it weighs (2^63 - 1) // 5",
         "beta", "rate", {"peer": "alpha", "task": "t-1", "score": 5}, name="r1", ts=at(5))
    c.ok("alpha rates beta 1 for t-1: it weighs 2^63 - 1", "alpha", "rate",
         {"peer": "beta", "task": "t-1", "score": 1}, name="r2", ts=at(5))
    c.ok("beta holds 1 for alpha's task t-2", "beta", "hold", hold("alpha", 1, at(0) + DAY,
                                                                   "t-2"), name="h3", ts=at(6))
    c.ok("beta posts it", "beta", "post", {"hold": c.id("h3"), "amount": 1}, name="p3",
         ts=at(6))
    c.ok("beta rates alpha 5 for t-2: no room is left under the bound, it weighs 0", "beta",
         "rate", {"peer": "alpha", "task": "t-2", "score": 5}, name="r3", ts=at(7))
    fifth = cap // 5
    return vector(c, "Money paid round and round settles without bound: the settled amount "
                  "of a payer, payee and task stops at 2^63 - 1, and a rating weighs at most "
                  "what keeps the rated account's weighted sum within 2^63 - 1 (16.5); one "
                  "past the bound counts among the tasks with a weight of 0.",
                  {"supply": half, "balances": balances(alpha=(1, 0), beta=(half - 1, 0)),
                   "reputation": {"alpha": {"tasks": 2, "weight": fifth,
                                            "weighted": 5 * fifth},
                                  "beta": {"tasks": 1, "weight": cap, "weighted": cap}}})


BUILDERS = (reject_broken_chain, reject_wrong_signer, reject_overdraft,
            reject_hold_resolved, reject_hold_expired, reject_conflict, reject_rating,
            bound_sums)


def render() -> dict[str, str]:
    """File name -> file text of every ledger vector."""
    vectors = [build() for build in BUILDERS]
    return {f"{data['name']}.json": json.dumps(data, indent=2) + "\n" for data in vectors}


def committed(directory: Path = HERE) -> dict[str, str]:
    return {path.name: path.read_text(encoding="utf-8")
            for path in sorted(directory.glob("*.json"))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m protocol.vectors.ledger.generate",
                                     description=__doc__)
    parser.add_argument("--check", action="store_true",
                        help="fail if the committed vectors differ from the generator's")
    parser.add_argument("--write", action="store_true", help="write the vectors")
    parser.add_argument("--directory", type=Path, default=HERE, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    files = render()
    if args.check:
        if committed(args.directory) != files:
            print(f"{args.directory} out of date: run `python -m "
                  "protocol.vectors.ledger.generate --write`", file=sys.stderr)
            return 1
        return 0
    if not args.write:
        parser.error("say --write or --check")
    for stale in args.directory.glob("*.json"):
        if stale.name not in files:
            stale.unlink()
    for name, text in files.items():
        (args.directory / name).write_text(text, encoding="utf-8")
    print(f"wrote {len(files)} ledger vectors to {args.directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
