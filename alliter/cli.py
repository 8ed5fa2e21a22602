"""What every command line of alliter does the same way: its one kind of user error, flags made from dataclasses
(a field's docstring is its flag's help, so a knob is written once), and one handler that turns an error into
its line and exit status 2."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import os
import shutil
import signal
import sys
import textwrap
from dataclasses import fields
from typing import Any, Callable, NoReturn, Sequence


class AlliterError(Exception):
    """A user-facing error: the command lines print its one line and exit with 2."""


class InactiveFlag(AlliterError):
    """A flag that does nothing in the configuration it is given in (refused, not ignored): `flag` names it (a
    study passes such a flag only to the steps where it acts)."""

    def __init__(self, flag: str, message: str):
        super().__init__(message)
        self.flag = flag


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help as wide as the terminal, 100 columns when it goes to a file or a pipe (argparse's fallback, 80, leaves
    56 for the help of each flag); the description as written."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30, width=shutil.get_terminal_size((100, 24)).columns - 2)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose errors (an unknown flag, a value of the wrong type) are one line and exit status 2,
    as every other error of a command line, not the whole usage; a flag is taken only as written in full (argparse
    would read `--grid` as `--grid-generations`, and `--max-gen` past a check of the flags by name)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, allow_abbrev=False, **{"formatter_class": HelpFormatter, **kwargs})

    def error(self, message: str) -> NoReturn:
        raise AlliterError(f"{message} (see {self.prog} --help)")


def prog(script: str) -> str:
    """A command's name in its usage and errors, as typed: `alliter NAME` through alliter's console (its __main__
    puts that in argv[0]; an installed package has no checkout's scripts), else the checkout's `script`."""
    return sys.argv[0] if sys.argv[0].startswith("alliter ") else script


def command(main: Callable[[Sequence[str] | None], int]) -> Callable[[Sequence[str] | None], int]:
    """The one error handler of every command's main(argv): an AlliterError is its line on stderr and exit status 2,
    with no traceback; a Ctrl-C that the command does not handle itself (a sweep and a study say how to go on) is
    exit status 130, with no traceback either."""

    @functools.wraps(main)
    def handled(argv: Sequence[str] | None = None) -> int:
        try:
            return main(argv)
        except AlliterError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("\ninterrupted", file=sys.stderr)
            return 130

    return handled


def stop_on_sigterm() -> None:
    """A SIGTERM (what `ray job stop`, Kubernetes and a process manager send) takes the path of a Ctrl-C: the sweep's
    Tune saves its state and the command says how to continue, where SIGTERM's default would end it unsaved. SIGINT
    is unblocked too: a Ray job's driver starts with it blocked (Ray's job supervisor blocks it in its processes). The
    first SIGTERM only: `ray job stop` sends one to every process of the job, so a study's step gets Ray's and the one
    the study passes on, and a second Ctrl-C would stop Tune without its save (SIGKILL still ends it)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    stopping = False

    def as_ctrl_c(signum: int, frame: Any) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        handler = signal.getsignal(signal.SIGINT)  # Python's (KeyboardInterrupt), or Tune's while it runs
        if callable(handler):
            handler(signal.SIGINT, frame)

    signal.signal(signal.SIGTERM, as_ctrl_c)


def run(main: Callable[[], int]) -> NoReturn:
    """Exit with main's code; a reader that stops early (`| head -1`) ends the command quietly, not with a
    BrokenPipeError traceback; a SIGTERM is a Ctrl-C (stop_on_sigterm)."""
    stop_on_sigterm()
    try:
        code = main()
        sys.stdout.flush()  # here, so that a closed pipe raises inside the try and not at exit
    except KeyboardInterrupt:  # before a command's own handler (`command`) took over: while importing it
        print("\ninterrupted", file=sys.stderr)
        code = 130
    except BrokenPipeError:
        # Python's recipe (docs: signal, "Note on SIGPIPE"): stdout to devnull, so the flush at exit is quiet too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    sys.exit(code)


def one_line(err: BaseException, limit: int = 200) -> str:
    """An exception's message on one line, cut at `limit` characters."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:limit] + ("..." if len(text) > limit else "")


def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass (and of the dataclasses it extends), by field name."""
    docs: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
                docs[node.target.id] = " ".join(str(nxt.value.value).split())  # type: ignore[union-attr]
    return docs


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_BOOL_WORDS = (*_TRUE, *_FALSE)


def _parse_bool(text: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_config_flags(parser: argparse.ArgumentParser, cls: type, skip: Sequence[str] = ()) -> None:
    """One flag per dataclass field. Defaults are left out of the namespace (SUPPRESS), so that
    `given_config_values` tells what the user actually typed. A field's metadata may name the flag's own parser
    (`flag_type`, e.g. one that reads a file) and its metavar."""
    docs = field_docs(cls)
    hints = {f.name: f.type for f in fields(cls)}
    for f in fields(cls):
        if f.name in skip:
            continue
        hint = str(hints[f.name])
        kind = {"float": float, "int": int, "bool": _parse_bool}.get(hint.split(" ")[0].split("|")[0].strip(), str)
        kind = f.metadata.get("flag_type", kind)
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=kind,
            default=argparse.SUPPRESS,
            **({"nargs": "?", "const": True} if kind is _parse_bool else {}),  # bare --flag means true
            metavar=f.metadata.get("metavar", f.name.upper() if kind is not _parse_bool else "true|false"),
            help=docs.get(f.name, "") + ("" if "default" in docs.get(f.name, "") else f" (default: {f.default})"),
        )


def flag_groups(tokens: Sequence[str], *classes: type) -> list[list[str]]:
    """Command-line tokens of the flags of `classes`' fields, grouped into each flag and its value (`--lr 1e-4`,
    `--lr=1e-4`, a bare `--kl-loss` or `--kl-loss false`), as add_config_flags' parser reads them."""
    optional = {"--" + f.name.replace("_", "-") for cls in classes for f in fields(cls)
                if str(f.type).split(" ")[0].split("|")[0].strip() == "bool"}
    groups: list[list[str]] = []
    i = 0
    while i < len(tokens):
        group = [tokens[i]]
        i += 1
        if group[0].startswith("--") and "=" not in group[0] and i < len(tokens):
            if group[0] not in optional or tokens[i].lower() in _BOOL_WORDS:
                group.append(tokens[i])
                i += 1
        groups.append(group)
    return groups


def given_config_values(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of `cls` set on the command line (add_config_flags leaves defaults out of the namespace)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names}
