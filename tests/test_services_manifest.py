"""services.toml as the agent may write it: every mistake named at once, nothing half-read."""

from __future__ import annotations

import pytest

from actors.services.manifest import MAX_BYTES, ManifestError, ServiceSpec, parse


def errors_of(text: str, max_services: int = 8) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        parse(text.encode(), max_services)
    return caught.value.errors


def test_a_good_file_gives_each_service_its_argv_ready_path_policy_and_files() -> None:
    specs = parse(b"""
[services.web]
command = ["python3", "app.py", "--quiet"]
ready = "/health"
restart = "on-failure"
files = ["app.py", "static/**"]

[services.worker-2]
command = "python3 worker.py | tee out.log"
ready = "/"
""", 8)
    assert specs == {
        "web": ServiceSpec("web", ("python3", "app.py", "--quiet"), "/health", "on-failure",
                           ("app.py", "static/**")),
        "worker-2": ServiceSpec("worker-2", ("/bin/sh", "-c", "python3 worker.py | tee out.log"),
                                "/", "always", ()),
    }
    assert specs["web"].pathspecs() == [":(glob)app.py", ":(glob)static/**"]


def test_an_empty_file_declares_nothing() -> None:
    assert parse(b"", 8) == {}


def test_every_mistake_is_named_at_once() -> None:
    errors = errors_of("""
other = 1
[services.Web]
command = ["python3", "app.py"]
ready = "/health"
[services.no-ready]
command = ["python3"]
[services.bad-ready]
command = ["python3"]
ready = "health check"
[services.bad-policy]
command = "x"
ready = "/"
restart = "sometimes"
colour = "blue"
[services.no-command]
ready = "/"
[services.bad-files]
command = ["x"]
ready = "/"
files = ["../etc/passwd", "/abs", "ok/**"]
""")
    text = "\n".join(errors)
    assert "unknown top-level key(s) 'other'" in text
    assert "[services.Web]: a service name is 1-32 of a-z, 0-9 and -" in text
    assert "[services.no-ready]: `ready` is required" in text
    assert "[services.bad-ready]: `ready` must be a path starting with /" in text
    assert "[services.bad-policy]: `restart` must be one of always, on-failure, never" in text
    assert "[services.bad-policy]: unknown key(s) 'colour'" in text
    assert "[services.no-command]: `command` is required" in text
    assert "'../etc/passwd' must be a relative glob" in text
    assert "'/abs' must be a relative glob" in text
    assert "ok/**" not in text


@pytest.mark.parametrize(("text", "expected"), [
    ("[services.a", "not valid TOML"),
    ("services = 3", "`services` must be a table"),
    ("[services.a]\ncommand = []\nready = '/'", "`command` is required"),
    ("[services.a]\ncommand = [1]\nready = '/'", "`command` is required"),
    ("[services.a]\ncommand = ''\nready = '/'", "`command` is empty"),
    ('[services.a]\ncommand = ["a\\u0000b"]\nready = "/"', "NUL"),
    (f"[services.a]\ncommand = ['{'x' * 5000}']\nready = '/'", "longer than 4096"),
    ("[services.a]\ncommand = ['x']\nready = '/\\r\\nHost: evil'", "`ready` must be a path"),
    ("[services.a]\ncommand = ['x']\nready = '/'\nfiles = 'app.py'", "must be a list of globs"),
    (f"[services.{'a' * 33}]\ncommand = ['x']\nready = '/'", "1-32 of a-z"),
])
def test_each_wrong_value_is_refused(text: str, expected: str) -> None:
    assert expected in "\n".join(errors_of(text))


def test_more_services_than_allowed_are_refused() -> None:
    text = "".join(f"[services.s{i}]\ncommand = ['x']\nready = '/'\n" for i in range(3))
    assert errors_of(text, max_services=2) == [
        "3 services declared; at most 2 (services.max_services)"]


def test_an_oversized_or_binary_file_is_refused_unread() -> None:
    assert "larger than" in errors_of("#" * (MAX_BYTES + 1))[0]
    with pytest.raises(ManifestError, match="not UTF-8"):
        parse(b"\xff\xfe", 8)


def test_a_flood_of_mistakes_is_cut_short() -> None:
    text = "".join(f"[services.s{i}]\n" for i in range(100))
    errors = errors_of(text, max_services=200)
    assert len(errors) == 21
    assert errors[-1].startswith("... and ")
