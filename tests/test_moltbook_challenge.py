"""The verification challenge solver (actors/moltbook/challenge.py) on Moltbook's documented
example, on challenges quoted in public posts about it, on variants written the documented
way (tests/moltbook_server.obfuscate), and on what it must refuse to guess."""

from __future__ import annotations

import random

import pytest

from actors.moltbook.challenge import Unsolvable, collapse, solve
from tests.moltbook_server import make_challenge, obfuscate, words

# SKILL.md 1.11, "AI Verification Challenges": the example and its answer.
DOCUMENTED = ("A] lO^bSt-Er S[wImS aT/ tW]eNn-Tyy mE^tE[rS aNd] SlO/wS bY^ fI[vE, wH-aTs] "
              "ThE/ nEw^ SpE[eD?", "15.00")
# Quoted by agents in public posts and by a published solver's README, with the answer
# they give (split words, doubled letters, filler words, a bare operator).
SEEN = [
    ("A] lO-bS tErS^ cLaW ]fOrCe| iN~ wAtEr, tHe^ lObStEr muLtIpLiEs dOmInAnCe um, tHe "
     "fIrSt cLaW iS tWeNtY tHrEe NeWtOnS aNd ThE sEcOnD cLaW iS fIvE nEwToNs", "115.00"),
    ("A] Lo^bSt-Er ClAw| F oRcE Is ThIrTy tW o NeW ToNs Um AnD InCrEaSeS By TwElVe", "44.00"),
    ("A] Lo.oB-StErR LooObSsTtErR ClAwW ExErTsS~ TwEnTy] SeVeN^ NoOtOnS| AnD/ ThE Lo.bStErR "
     "SwImS Um~ AtT VeLaWcItEe\\ FoUr< MeTeRs, WhAtS* ThE PoWeR?", "108.00"),
    ("Lo]bS-tEr S^wImS\\ aT/ tHiR tY sEvEn ~mEtErS * nInE {nEwToNs} aNd/ cLaW fRiCtIoN "
     "iNvOlVeD, wHaT iS tHe/ tOtAl* fOrCe?", "333.00"),
    ("A] lOoObB-sTtErr ClAw^ FoRcEe Is/ tHiRrTy ThReE ]nOoOtToOnNs +~ fOuRtEeEn NooOtToOnNs, "
     "hOw/ MuCh^ ToTaL ]FoRcEe?", "47.00"),
    ("ClAw ExErTs FoRcE ThIrTy TwO NeWToNs aNd GaInS SeVeEnTeEn", "49.00"),
]


def test_the_documented_example() -> None:
    text, answer = DOCUMENTED
    assert solve(text) == answer


@pytest.mark.parametrize(("text", "answer"), SEEN)
def test_challenges_seen_in_public(text: str, answer: str) -> None:
    assert solve(text) == answer


@pytest.mark.parametrize("seed", range(400))
def test_variants_written_the_documented_way(seed: int) -> None:
    text, answer = make_challenge(random.Random(seed))
    assert solve(text) == answer, text


@pytest.mark.parametrize(("clean", "answer"), [
    ("a lobster swims at {a} meters and slows by {b}", "-"),
    ("a lobster claw force is {a} newtons and increases by {b}", "+"),
    ("the lobster multiplies its claws, {a} newtons times {b} newtons", "*"),
    ("a lobster has {a} meters of rope divided by {b}", "/"),
])
def test_every_number_and_operation(clean: str, answer: str) -> None:
    rng = random.Random(len(clean))
    for a in range(1, 100, 7):
        for b in (1, 2, 9, 13, 20, 47):
            expected = {"+": a + b, "-": a - b, "*": a * b, "/": a / b}[answer]
            text = obfuscate(clean.format(a=words(a), b=words(b)), rng)
            assert solve(text) == f"{expected:.2f}", text


def test_numbers_in_digits_hundreds_and_decimals() -> None:
    assert solve("a lobster swims at 20 meters and slows by 5") == "15.00"
    assert solve("a claw force is one hundred and five newtons and gains three newtons") \
        == "108.00"
    assert solve("a lobster swims at three point five meters and gains two meters") == "5.50"
    assert solve("a lobster swims at ten meters, slows by twenty") == "-10.00"


def test_letter_runs_collapse_to_the_number_words() -> None:
    assert collapse("twenntyy") == "twenty"
    assert collapse("fourteeeen") == collapse("fourteen") == "fourten"
    assert solve("A lObStEr sWiMs aT sEvVeNtEeEn MeTeRs TiMeS tWoO") == "34.00"


def test_more_than_two_numbers_take_the_two_with_units() -> None:
    text = "one lobster claw exerts twenty newtons and gains five newtons"
    assert solve(text) == "25.00"


@pytest.mark.parametrize("text", [
    "a lobster swims at twenty meters",  # one number
    "a lobster swims twenty meters and five and seven",  # three, none with a unit to tell
    "a lobster swims at twenty meters and five meters",  # no operation
    "a lobster has ten meters of rope divided by zero",  # no answer
    "",
])
def test_what_it_cannot_read_it_does_not_guess(text: str) -> None:
    with pytest.raises(Unsolvable):
        solve(text)
