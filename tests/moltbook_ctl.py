"""`entityctl` with its `moltbook` commands (entityd/app/ctl_moltbook.py), for the tests:
`python -m tests.moltbook_ctl --config FILE moltbook status`. Until entityd/app/ctl.py
registers those commands itself, this adds them to its parser; once it does, this is
entityctl exactly as it is."""

from __future__ import annotations

import argparse
import sys

from entityd.app import ctl, ctl_moltbook

_parser = ctl.parser


def parser() -> argparse.ArgumentParser:
    top = _parser()
    sub = next(action for action in top._actions
               if isinstance(action, argparse._SubParsersAction))
    if "moltbook" not in sub.choices:
        ctl_moltbook.add_commands(sub)
    return top


if __name__ == "__main__":
    ctl.parser = parser
    sys.exit(ctl.main())
