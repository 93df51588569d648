"""Command-line mistakes reported in the words of Celery's CLI (click's), exit status 2.

fastq's commands are argparse's, whose errors read `fastq: error: unrecognized arguments: --foo` under the
whole program's usage. A Celery user who mistypes `celery worker --concurency 4` sees click's three lines
instead, naming the command, the help to try and the option, with a guess when one is close; scripts and
people who read those get the same here. `--help` output stays argparse's.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from typing import Any, NoReturn


def subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[Any] | None:
    """The action holding `parser`'s subcommands (`choices`: name -> parser, `dest`), None if it has none."""
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are click's (its subcommands' parsers are made of this class too)."""

    def error(self, message: str) -> NoReturn:
        usage = f'Usage: {self.prog} [OPTIONS]' + (' [COMMAND] [ARGS]...' if subcommands(self) else '')
        sys.stderr.write(f"{usage}\nTry '{self.prog} --help' for help.\n\nError: {self.click_words(message)}\n")
        sys.exit(2)

    def unrecognized(self, extra: list[str]) -> NoReturn:
        """Arguments no option or positional took (what `parse_known_args` left over), reported by the
        parser of the command they were given to."""
        self.error('unrecognized arguments: ' + ' '.join(extra))

    def click_words(self, message: str) -> str:
        """argparse's message as click words it (those Celery's CLI shows); anything else as it is."""
        if message.startswith('unrecognized arguments: '):
            extra = message.removeprefix('unrecognized arguments: ').split()
            option = next((arg for arg in extra if arg.startswith('-')), None)
            if option is None:
                return f'Got unexpected extra argument{"s" if len(extra) > 1 else ""} ({" ".join(extra)})'
            return self._no_such_option(option.split('=', 1)[0])
        argument = re.match(r'argument (\S+): (.*)$', message, re.S)
        if argument is not None:
            names, problem = argument.groups()
            return _argument_problem(names, problem)
        required = re.match(r'the following arguments are required: (.*)$', message)
        if required is not None:
            return f"Missing argument '{required.group(1).split(', ')[0].upper()}'."
        return message[:1].upper() + message[1:]

    def _no_such_option(self, option: str) -> str:
        known = [name for action in self._actions for name in action.option_strings if name.startswith('--')]
        close = difflib.get_close_matches(option, known)
        if not close:
            return f"No such option '{option}'."
        if len(close) == 1:
            return f"No such option '{option}'. Did you mean '{close[0]}'?"
        return f"No such option '{option}'. (Possible options: {', '.join(sorted(close))})"


def _argument_problem(names: str, problem: str) -> str:
    """click's words for what argparse said of one argument (`-c/--concurrency`, or a positional)."""
    flags = names.split('/')
    if not flags[0].startswith('-'):  # a positional: the command itself, or a command's argument
        choice = re.match(r"invalid choice: '([^']*)'", problem)
        if names == 'COMMAND' and choice is not None:
            return f"No such command '{choice.group(1)}'."
        return f"Invalid value for '{names.upper()}': {_value_problem(problem)}"
    if problem.startswith('expected '):  # (one argument, or at least one)
        return f"Option '{flags[0]}' requires an argument."
    if problem.startswith('ignored explicit argument'):
        return f"Option '{flags[-1]}' does not take a value."
    return f'Invalid value for {" / ".join(repr(flag) for flag in flags)}: {_value_problem(problem)}'


def _value_problem(problem: str) -> str:
    invalid = re.match(r"invalid (\w+) value: '(.*)'$", problem)
    if invalid is not None:
        kind, value = invalid.groups()
        words = {'int': 'a valid integer', 'float': 'a valid float'}.get(kind, 'valid')
        return f"'{value}' is not {words}."
    choice = re.match(r"invalid choice: '(.*)' \(choose from (.*)\)$", problem)
    if choice is not None:
        value, options = choice.groups()
        return f"'{value}' is not one of {options}."
    return problem
