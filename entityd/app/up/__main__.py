"""`python -m entityd.app.up up|down|ps [FILE]`: the same commands as `entityd up`."""

import argparse
import sys

from . import add_commands, main

parser = argparse.ArgumentParser(prog="python -m entityd.app.up")
add_commands(parser.add_subparsers(dest="command", required=True))
sys.exit(main(parser.parse_args()))
