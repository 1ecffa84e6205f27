"""The ``segpipe`` command line: one sub-command per module in this package.

Each command module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.
Errors a user can cause are ``SegpipeError``s: printed as one line, non-zero exit, no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import re
import signal
import sys
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import NoReturn

from engines.errors import SegpipeError, Terminated

# Explicit registry: (command name, module). Imported lazily so `segpipe --help` stays fast.
COMMANDS: tuple[tuple[str, str], ...] = (
    ("run", "pipeline.cli.run"),
    ("info", "pipeline.cli.info"),
    ("synth", "pipeline.cli.synth"),
    ("predict", "pipeline.cli.predict"),
    ("shards", "pipeline.cli.shards"),
    ("convert", "pipeline.cli.convert"),
    ("train", "pipeline.cli.train"),
    ("val", "pipeline.cli.val"),
    ("listen", "pipeline.cli.listen"),
    ("status", "pipeline.cli.status"),
    ("export", "pipeline.cli.export"),
    ("build-engine", "pipeline.cli.build_engine"),
    ("benchmark", "pipeline.cli.benchmark"),
)

_KEY_VALUE = re.compile(r"^([A-Za-z_][A-Za-z0-9_-]*)=(.*)$", re.S)


class UnknownKey(Exception):
    """A ``key=value`` token whose key is no option of the command."""


def translate_key_value(argv: Sequence[str], actions: Mapping[str, argparse.Action]) -> list[str]:
    """Accept Ultralytics' ``key=value`` spelling: ``model=x.pt`` becomes ``--model x.pt``.

    ``key=True`` becomes a bare ``--key``. ``key=False`` becomes ``--no-key`` when the command has that
    option (so a flag that defaults to on can be turned off), and nothing otherwise (an off-by-default
    ``store_true`` flag). ``key=None`` (or ``null``, as Ultralytics' args.yaml writes an unset value) leaves
    the option at its default. ``actions``: the command's option strings -> actions. A token that is an
    option's value (``--source a=b.jpg``) is left as it is; a key that is no option raises UnknownKey.
    """
    out: list[str] = []
    value_next = False
    for tok in argv:
        m = None if value_next or tok.startswith("-") else _KEY_VALUE.match(tok)
        key = m.group(1).replace("_", "-") if m else ""
        if m and f"--{key}" not in actions and f"--no-{key}" not in actions:
            if not _optional_value(actions, out):
                raise UnknownKey(m.group(1))
            m = None  # the path an optional-value flag takes (--resume runs/a=1/last.pt)
        value_next = _takes_value(actions, tok) if not m else False
        if not m:
            out.append(tok)
            continue
        value = m.group(2)
        if value.lower() == "true":
            out.append(f"--{key}")
        elif value.lower() == "false":
            if f"--no-{key}" in actions:
                out.append(f"--no-{key}")
        elif value.lower() not in ("none", "null"):
            out += [f"--{key}", value]
    return out


def _takes_value(actions: Mapping[str, argparse.Action], tok: str) -> bool:
    """Whether the token after ``tok`` is its value (``--out DIR``, not ``--out=DIR`` or ``--half``)."""
    action = _action(actions, tok)
    return action is not None and action.nargs not in (0, "?")


def _optional_value(actions: Mapping[str, argparse.Action], before: list[str]) -> bool:
    """Whether the token after ``before`` may be the value of a flag whose value is optional."""
    action = _action(actions, before[-1]) if before else None
    return action is not None and action.nargs == "?"


def _action(actions: Mapping[str, argparse.Action], tok: str) -> argparse.Action | None:
    """The action of option ``tok``, also abbreviated as argparse takes it (``--sou`` for ``--source``)."""
    if tok in actions or not tok.startswith("--"):
        return actions.get(tok)
    found = {action for option, action in actions.items() if option.startswith(tok)}
    return found.pop() if len(found) == 1 else None


def _load(module: str) -> ModuleType:
    return importlib.import_module(module)


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage mistake said in one line: its usage block printed first buried the culprit.
    Sub-command parsers are made of the same class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(commands: Sequence[tuple[str, str]] = COMMANDS) -> argparse.ArgumentParser:
    """The parser of ``commands`` (each module imported here; by default all of them)."""
    parser = _Parser(
        prog="segpipe",
        description="Streaming instance segmentation: run cameras, train, validate, export.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in commands:
        mod = _load(module)
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Only the command given is imported: some modules pull in torch (2-3 s), and until `segpipe run`
    # has installed its SIGHUP handler a reload signal kills it (config management signalling a pod that
    # was just restarted). Without a known command, every module, for the help and the error.
    chosen = tuple(c for c in COMMANDS if argv and c[0] == argv[0])
    parser = build_parser(chosen or COMMANDS)
    if argv:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        command = sub.choices.get(argv[0])
        if command:
            try:
                argv = argv[:1] + translate_key_value(argv[1:], command._option_string_actions)
            except UnknownKey as e:
                # named as typed (not as the --key it would become), without its value: it may be a secret
                command.error(f"unknown option {e} (in {e}=...)")
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except SegpipeError as e:
        lines = str(e).splitlines() or [type(e).__name__]
        for line in lines:
            print(f"segpipe {args.command}: error: {line}", file=sys.stderr)
        return e.exit_code
    except Terminated:  # SIGTERM where the command's cleanup must run (sigterm_interrupts)
        print(f"segpipe {args.command}: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print(f"segpipe {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader of stdout went away (`segpipe listen ... | head`): end quietly, with the status of a
        # tool killed by SIGPIPE
        from pipeline.console import stdout_to_devnull
        stdout_to_devnull()
        return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
