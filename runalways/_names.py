"""Lock names made of the job's arguments: ``RUNALWAYS_NAME='{script}-{1}'``, ``--name 'backup-{1}'``.

A script that holds several jobs behind one file (Django's ``manage.py``, a Click group) is
one job to a lock on its file; a name with its first argument makes each sub-command a job of
its own. A template's fields:

* ``{1}`` … ``{9}``: the script's ``sys.argv[1]`` … (the command's arguments under
  ``runalways run``). A field whose argument is missing is an error naming it, never
  nothing: ``backup-{1}`` with a forgotten argument would otherwise lock ``backup-`` for
  every database at once;
* ``{args}``: every argument, quoted as a shell would need them (``shlex.join``);
* ``{script}``: the script's (the command's) file name, without its directory;
* ``{{`` and ``}}``: a brace.

A tiny parser of its own, not ``str.format``: a template is text from the environment or
the command line, and format would reach attributes and items (``{0.__class__}``).

The expanded name must be one line of text: a control character (a newline in an
argument) or bytes that are not text are refused. Anything else is a name: the lock
directory makes a file name of any name without two names sharing one
(``runalways._lockdir.file_name``: the readable part, and a hash of the whole name), and
the cluster backends hash it or key on it.

Pure, loaded only when a lock is named: a start without a name never imports it.
"""

from __future__ import annotations

from runalways.errors import SettingError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Iterator, Sequence, Tuple, Union

    #: A piece of a parsed template: literal text, or the field it names ("1", "args", "script").
    Piece = Tuple[bool, str]

#: Every field a template may use, as messages list them.
FIELDS = "{1} to {9}, {args}, {script}"
_WORDS = ("args", "script", *(str(number) for number in range(1, 10)))
#: Characters that end a line besides the C0 and C1 controls: a name is said in one line.
_LINE_BREAKS = "\u2028\u2029"


class Job:
    """What a template is expanded with: the arguments and the file name of the job's program.

    ``arguments`` and ``script`` are None where they are not known (``runalways status``,
    which is told a name and starts nothing): a field that needs them is then refused.
    ``called`` is how a message names the job: "the script", "the command".
    """

    __slots__ = ("arguments", "called", "script")

    def __init__(
        self, arguments: Union[Sequence[str], None], script: Union[str, None], called: str = "the script"
    ) -> None:
        self.arguments = arguments
        self.script = script
        self.called = called


def _pieces(template: str, where: str) -> Iterator[Piece]:
    """The template as (is a field, text) pieces; SettingError for a lone brace or an unknown field."""
    text: list[str] = []
    position = 0
    while position < len(template):
        character = template[position]
        doubled = template[position : position + 2] in ("{{", "}}")
        if doubled:
            text.append(character)
            position += 2
            continue
        if character == "}":
            raise SettingError(f"{where}={template!r} has a '}}' that closes nothing; write '}}}}' for a brace")
        if character != "{":
            text.append(character)
            position += 1
            continue
        end = template.find("}", position)
        if end < 0:
            raise SettingError(f"{where}={template!r} has a '{{' that is never closed; write '{{{{' for a brace")
        word = template[position + 1 : end]
        if word not in _WORDS:
            raise SettingError(
                f"{where}={template!r} has an unknown field {{{word}}}; use {FIELDS}, or '{{{{' and '}}}}' for braces"
            )
        if text:
            yield False, "".join(text)
            text = []
        yield True, word
        position = end + 1
    if text:
        yield False, "".join(text)


def check(template: str, where: str) -> str:
    """``template`` if it parses (RUNALWAYS_NAME's value check): the fields are filled in at the start."""
    for _ in _pieces(template, where):
        pass
    return template


def uses_fields(template: str) -> bool:
    """Whether ``template`` names any field (a name without one is a name as it is)."""
    return "{" in template.replace("{{", "")


def expand(template: str, where: str, job: Job) -> str:
    """The lock name ``template`` gives for ``job``; SettingError (one line, naming ``where``) when
    it uses an unknown or a missing field, or expands to nothing or to more than one line of text."""
    parts = []
    for is_field, text in _pieces(template, where):
        parts.append(_field(template, where, text, job) if is_field else text)
    name = "".join(parts)
    if not name.strip():
        with_arguments = " with these arguments" if uses_fields(template) else ""
        raise SettingError(f"{where}={template!r} is an empty name{with_arguments}; give the lock a name")
    if any(ord(character) < 32 or 127 <= ord(character) < 160 or character in _LINE_BREAKS for character in name):
        raise SettingError(
            f"{where}={template!r} makes the name {name!r}, which has a control character; "
            "a lock name is one line of text"
        )
    if any("\udc80" <= character <= "\udcff" for character in name):
        raise SettingError(
            f"{where}={template!r} makes the name {name!r}, which has bytes that are not text; "
            "a lock name is one line of text"
        )
    return name


def _field(template: str, where: str, word: str, job: Job) -> str:
    if word == "script":
        if job.script is None:
            raise SettingError(_unknown_here(template, where, word))
        return job.script
    if job.arguments is None:
        raise SettingError(_unknown_here(template, where, word))
    if word == "args":
        import shlex

        return shlex.join(job.arguments)
    number = int(word)
    if number > len(job.arguments):
        count = len(job.arguments)
        given = "no argument" if count == 0 else f"only {count} argument{'s' if count > 1 else ''}"
        raise SettingError(f"{where}={template!r} uses {{{word}}}, but {job.called} was given {given}")
    return job.arguments[number - 1]


def _unknown_here(template: str, where: str, word: str) -> str:
    return (
        f"{where}={template!r} uses {{{word}}}, which only the job's own start can fill in; "
        "give runalways status the name the job made, with --name (such as backup-db1)"
    )
