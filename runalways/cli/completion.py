"""``runalways completion bash|zsh``: shell completion scripts generated from the parser.

The scripts are written out from the argparse parser itself, so a new command or option
completes without anyone editing them, and they need nothing at run time: no helper
package, no call back into Python at each key press. What a value completes to is read
from the option: its choices, the backend names for ``--backend``, files for a PATH or a
SCRIPT, a command line after ``run --``, and nothing for free text (a name, seconds).
"""

from __future__ import annotations

import argparse
import shlex
from typing import Iterator

from runalways.backends import names

#: What a value completes to, besides a fixed list of words.
FILES = "files"
COMMAND = "command"
NOTHING = ""


class Command:
    """One sub-command as the completion scripts see it."""

    def __init__(self, name: str, parser: argparse.ArgumentParser, about: str) -> None:
        self.name = name
        self.about = about
        #: (option strings, what its value completes to or None for a flag, help, metavar)
        self.options: list[tuple[list[str], list[str] | str | None, str, str]] = []
        #: What the positional argument completes to (a word list, FILES, COMMAND), if any.
        self.positional: list[str] | str | None = None
        self.positional_name = ""
        for action in parser._actions:
            if action.option_strings:
                value = None if action.nargs == 0 else _values(action)
                metavar = str(action.metavar or action.dest.upper())
                self.options.append((list(action.option_strings), value, action.help or "", metavar))
            elif not isinstance(action, argparse._SubParsersAction):
                self.positional = _values(action)
                self.positional_name = str(action.metavar or action.dest)

    def option_words(self) -> list[str]:
        words = [option for strings, *_ in self.options for option in strings]
        return [*words, "--"] if self.positional == COMMAND else words


def _values(action: argparse.Action) -> list[str] | str:
    if action.choices is not None:
        return [str(choice) for choice in action.choices]
    if action.dest == "backend":
        return names()
    if action.nargs == argparse.REMAINDER:
        return COMMAND
    if action.metavar in ("PATH", "SCRIPT"):
        return FILES
    return NOTHING


def commands(parser: argparse.ArgumentParser) -> Iterator[Command]:
    """The top level (named "") and then every sub-command of ``parser``."""
    yield Command("", parser, "")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            about = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, subparser in action.choices.items():
                yield Command(name, subparser, about.get(name, ""))


def script(shell: str, parser: argparse.ArgumentParser) -> str:
    return bash(parser) if shell == "bash" else zsh(parser)


def _words(words: list[str]) -> str:
    return shlex.quote(" ".join(words))


def _bash_reply(values: list[str] | str | None) -> str:
    if isinstance(values, list):
        return f'COMPREPLY=($(compgen -W {_words(values)} -- "$cur"))'
    if values == FILES:
        return 'compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -f -- "$cur"))'
    if values == COMMAND:
        return 'COMPREPLY=($(compgen -c -- "$cur"))'
    return "COMPREPLY=()"


def bash(parser: argparse.ArgumentParser) -> str:
    """A bash function filling COMPREPLY from COMP_WORDS, and the ``complete`` line registering it."""
    branches = []
    every = list(commands(parser))
    # Commands that end in a command line of their own (run): after their --, complete that.
    wrapping = "|".join(command.name for command in every if command.positional == COMMAND)
    for command in every:
        replies: dict[str, list[str]] = {}  # options whose values complete alike share a case
        for strings, value, *_ in command.options:
            if value is not None:
                replies.setdefault(_bash_reply(value), []).extend(strings)
        cases = "".join(
            f"                {'|'.join(options)}) {reply}; return ;;\n" for reply, options in replies.items()
        )
        prev = f"            case $prev in\n{cases}            esac\n" if cases else ""
        positional = command.positional if command.name else [other.name for other in every[1:]]
        options = _bash_reply(command.option_words())
        if positional in (None, NOTHING):
            choose = f"            {options} ;;\n"
        else:
            choose = f"            if [[ $cur == -* ]]; then {options}; else {_bash_reply(positional)}; fi ;;\n"
        label = command.name or "''"
        branches.append(f"        {label})\n{prev}{choose}")
    return (
        "# bash completion for runalways, generated from its parser by `runalways completion bash`.\n"
        "# Use: source <(runalways completion bash), or save it as\n"
        "# ~/.local/share/bash-completion/completions/runalways\n"
        "_runalways() {\n"
        "    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]} command= i\n"
        "    # The first word that is not an option is the command; after `run ... --` the rest\n"
        "    # is a command line of its own: its first word a command, then files.\n"
        "    for (( i = 1; i < COMP_CWORD; i++ )); do\n"
        "        if [[ -z $command ]]; then\n"
        "            [[ ${COMP_WORDS[i]} == -* ]] || command=${COMP_WORDS[i]}\n"
        f"        elif [[ $command == @({wrapping}) && ${{COMP_WORDS[i]}} == -- ]]; then\n"
        '            if (( i + 1 == COMP_CWORD )); then COMPREPLY=($(compgen -c -- "$cur"))\n'
        '            else compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -f -- "$cur")); fi\n'
        "            return\n"
        "        fi\n"
        "    done\n"
        "    case $command in\n" + "".join(branches) + "        *) COMPREPLY=() ;;\n"
        "    esac\n"
        "}\n"
        "complete -F _runalways runalways\n"
    )


def _zsh_quote(text: str) -> str:
    """``text`` inside single quotes, with _arguments's brackets and colons escaped."""
    for special in ("\\", "[", "]", ":"):
        text = text.replace(special, "\\" + special)
    return text.replace("'", "'\\''")


def _zsh_action(values: list[str] | str | None) -> str:
    if isinstance(values, list):
        return "(" + " ".join(_zsh_quote(value) for value in values) + ")"
    if values == FILES:
        return "_files"
    if values == COMMAND:
        return "_normal"
    return " "


def _zsh_specs(command: Command) -> list[str]:
    specs = []
    for strings, value, about, metavar in command.options:
        exclusive = "(- :)" if "--help" in strings or "--version" in strings else ""
        for option in strings:
            if value is None:
                specs.append(f"'{exclusive}{option}[{_zsh_quote(about)}]'")
            else:
                specs.append(f"'{option}=[{_zsh_quote(about)}]:{_zsh_quote(metavar)}:{_zsh_action(value)}'")
    if command.positional == COMMAND:
        specs.append("'*:: :_normal'")
    elif command.positional is not None:
        specs.append(f"'1:{_zsh_quote(command.positional_name)}:{_zsh_action(command.positional)}'")
    return specs


def zsh(parser: argparse.ArgumentParser) -> str:
    """A #compdef function for zsh's completion system, built on _arguments and _describe."""
    top, *subcommands = commands(parser)
    described = " ".join(f"'{_zsh_quote(command.name)}:{_zsh_quote(command.about)}'" for command in subcommands)
    branches = "".join(
        f"        {command.name})\n          _arguments -S \\\n            "
        + " \\\n            ".join(_zsh_specs(command))
        + " && ret=0 ;;\n"
        for command in subcommands
    )
    return (
        "#compdef runalways\n"
        "# zsh completion for runalways, generated from its parser by `runalways completion zsh`.\n"
        "# Use: runalways completion zsh > ~/.zfunc/_runalways, with ~/.zfunc in $fpath before compinit.\n"
        "_runalways() {\n"
        "  local curcontext=$curcontext state line ret=1\n"
        "  typeset -A opt_args\n"
        "  _arguments -C \\\n    "
        + " \\\n    ".join([*_zsh_specs(top), "'1:command:->command'", "'*:: :->argument'"])
        + " && ret=0\n"
        "  case $state in\n"
        "    command)\n"
        f"      local -a commands=({described})\n"
        "      _describe -t commands 'runalways command' commands && ret=0 ;;\n"
        "    argument)\n"
        "      curcontext=${curcontext%:*:*}:runalways-$line[1]:\n"
        "      case $line[1] in\n" + branches + "      esac ;;\n"
        "  esac\n"
        "  return ret\n"
        "}\n"
        'if [[ $zsh_eval_context[-1] == loadautofunc ]]; then _runalways "$@"; else compdef _runalways runalways; fi\n'
    )
