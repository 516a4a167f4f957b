"""Command-line entry point: ``sipswarm <command> ...``.

Each command lives in its own module under :mod:`sipswarm.commands` and
exports ``configure(parser)`` and ``main(args) -> int``; this file only
wires them, so that it holds no logic of its own.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from sipswarm import __version__

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("sipswarm.commands.run", "run a plan: controller plus a local agent, live progress"),
    "agent": ("sipswarm.commands.agent", "run a worker agent (configured from the environment)"),
    "controller": ("sipswarm.commands.controller", "run the reference controller for a fleet"),
    "call": ("sipswarm.commands.call", "place one call and print its SIP trace and timings"),
    "answer": ("sipswarm.commands.answer", "answer every call until interrupted"),
}


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with one sub-parser per command."""
    parser = argparse.ArgumentParser(
        prog="sipswarm", description="Distributed SIP/RTP load generator."
    )
    parser.add_argument("--version", action="version", version=f"sipswarm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        module.configure(cmd)
        cmd.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command; return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    module = getattr(args, "_module", None)
    if module is None:
        parser.print_help()
        return 2
    code: int = module.main(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
