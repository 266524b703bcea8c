"""entityctl's output reaches a terminal as text: what a member chose (a task's title, an
event, a subject) can neither move the cursor, rewrite a line, set the window's title,
write the clipboard nor reorder the line (entityd/app/terminal.py)."""

from __future__ import annotations

import io

import pytest

from entityd.app import ctl_watch
from entityd.app.terminal import SafeText, safe_output, styled, visible


@pytest.mark.parametrize(("text", "shown"), [
    ("plain text, tabs\tand\nnewlines", "plain text, tabs\tand\nnewlines"),
    ("\x1b[2K\rforged", "\\x1b[2K\\rforged"),                     # erase the line, CR
    ("\x1b]52;c;Y3VybA==\x07", "\\x1b]52;c;Y3VybA==\\x07"),       # OSC 52: the clipboard
    ("\x9b31m\x7f", "\\x9b31m\\x7f"),                             # C1 CSI, DEL
    ("abc\u202edcba", "abc\\u202edcba"),                          # right-to-left override
    ("a\u2028b\u2066c", "a\\u2028b\\u2066c"),                     # line separator, isolate
    ("entité ✓ 中文", "entité ✓ 中文"),                             # text stays text
])
def test_visible_shows_what_a_terminal_would_act_on(text: str, shown: str) -> None:
    assert visible(text) == shown


def test_every_write_is_made_visible_and_styles_pass_only_through_styled() -> None:
    raw = io.StringIO()
    out = SafeText(raw)
    print("title \x1b]0;owned\x07", file=out)  # type: ignore[arg-type]
    out.writelines(["\x1b[1A", "ok\n"])
    out.styled("\x1b[32m" + visible("\x1b") + "\x1b[0m")
    assert raw.getvalue() == "title \\x1b]0;owned\\x07\n\\x1b[1Aok\n\x1b[32m\\x1b\x1b[0m"


def test_safe_output_covers_stdout_and_stderr_and_restores_them(
        capsys: pytest.CaptureFixture[str]) -> None:
    with safe_output():
        print("out \x1b[2J")
        import sys
        print("err \x1b[2J", file=sys.stderr)
        styled("\x1b[33mcolour\x1b[0m\n")
    print("after \x1b")
    captured = capsys.readouterr()
    assert captured.out == "out \\x1b[2J\n\x1b[33mcolour\x1b[0m\nafter \x1b\n"
    assert captured.err == "err \\x1b[2J\n"


def test_watch_paints_its_own_colours_around_visible_text() -> None:
    paint = ctl_watch.Painter("entity-a", colour=True)
    line = paint("entity-b", visible("b [peer] x \x1b]0;t\x07"))
    assert line.startswith("\x1b[") and line.endswith("\x1b[0m")
    assert "\x07" not in line and "\\x1b]0;t\\x07" in line


def test_the_daemons_log_on_a_terminal_shows_what_others_chose_as_text(
        capsys: pytest.CaptureFixture[str]) -> None:
    """On a terminal (the console format) every string of a log line, a peer's reason or
    a subject it chose, is made visible; the JSON lines escape them themselves."""
    import structlog

    from entityd import logs
    saved = structlog.get_config()  # bound to this test's captured stderr otherwise
    try:
        logs.configure("info", "console")
        logs.get("t").warning("peer_wake", reason="wake \x1b]52;c;Y3VybA==\x07 up\r")
        err = capsys.readouterr().err
        assert "\x1b" not in err and "\x07" not in err and "\r" not in err, repr(err)
        assert "x1b]52;c;Y3VybA==" in err, err  # shown (structlog may quote it again)
        logs.get("t").warning("peer\x1b[2J", subject="fed.req.a.b.x\x1b]0;t\x07")
        err = capsys.readouterr().err
        assert "\x1b" not in err and "\x07" not in err, repr(err)
        logs.configure("info", "json")
        logs.get("t").warning("peer_wake", reason="\x1b[2J")
        err = capsys.readouterr().err
        assert "\x1b" not in err and "\\u001b[2J" in err, repr(err)
    finally:
        structlog.configure(**saved)
