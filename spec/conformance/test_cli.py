"""R11: the ``runalways`` command line: run, status, backends, errors."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, Tuple

import pytest
from harness import TIMEOUT, Procs, assert_already_running, finish, kill, read_line, wait_for_line, wait_until

RUNALWAYS = [sys.executable, "-m", "runalways"]
HOLDER = [sys.executable, "-c", "import sys; print('ready', flush=True); sys.stdin.read()"]


@pytest.mark.clause("R11.1")
def test_run_passes_on_the_exit_status(procs: Procs) -> None:
    outcome = procs.run([*RUNALWAYS, "run", "--silent", "--", "sh", "-c", "echo out; exit 7"])
    assert (outcome.returncode, outcome.stdout, outcome.stderr) == (7, "out\n", "")


@pytest.mark.clause("R11.1")
def test_run_alone_exits_1_with_the_message(procs: Procs) -> None:
    holder = procs.start([*RUNALWAYS, "run", "--name", "job", "--", *HOLDER])
    wait_for_line(holder, "ready")
    loser = procs.run([*RUNALWAYS, "run", "--alone", "--name", "job", "--", "true"])
    assert loser.returncode == 1
    assert_already_running(loser.stderr, "true", holder.pid)
    finish(holder)


@pytest.mark.clause("R11.2")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_run_forwards_signals_and_reports_128_plus_n(procs: Procs, signum: int) -> None:
    # The command resets the signal to its default action, so the signal kills it.
    command = (
        f"import signal, sys; signal.signal({int(signum)}, signal.SIG_DFL); "
        "print('ready', flush=True); sys.stdin.read()"
    )
    wrapper = procs.start([*RUNALWAYS, "run", "--silent", "--name", "signals", "--", sys.executable, "-c", command])
    wait_for_line(wrapper, "ready")
    wrapper.send_signal(signum)
    # Wait before closing stdin: at its end the command would exit 0 on its own.
    assert wrapper.wait(timeout=TIMEOUT) == 128 + signum
    finish(wrapper)


@pytest.mark.clause("R11.3")
def test_run_default_lock_is_the_resolved_command_and_its_arguments(procs: Procs) -> None:
    job = procs.script("job.sh", "echo ready\nread line\n", header="#!/bin/sh\n")
    job.chmod(0o755)
    holder = procs.start([*RUNALWAYS, "run", "--", "./job.sh", "a"])
    wait_for_line(holder, "ready")
    same = procs.run([*RUNALWAYS, "run", "--", str(job), "a"])  # another spelling of the same command
    assert (same.returncode, same.stdout) == (0, "")
    other_arguments = procs.run([*RUNALWAYS, "run", "--silent", "--", "./job.sh", "b"])
    assert other_arguments.stdout == "ready\n"
    finish(holder)


@pytest.mark.clause("R11.4")
def test_status_names_the_holder_and_exits_0(procs: Procs) -> None:
    job = procs.script("job.py")
    idle = procs.run([*RUNALWAYS, "status", str(job)])
    first, *rest = idle.stdout.splitlines()
    assert (idle.returncode, first) == (3, f"'{job}' is not running (backend {procs.backend})")
    # A backend that keeps its lock in a file of its own (pidfile) says where it looked.
    assert rest == [] or (len(rest) == 1 and rest[0].startswith("  lock file: /")), idle
    holder = procs.hold(job)
    busy = procs.run([*RUNALWAYS, "status", str(job)])
    assert busy.returncode == 0, busy
    assert busy.stdout.startswith(f"'{job}' is running: pid {holder.pid}, ")
    assert f"(backend {procs.backend})" in busy.stdout
    assert procs.run_python(job).stdout == ""  # status took no lock and left it held
    finish(holder)


@pytest.mark.clause("R11.4")
def test_status_of_a_named_lock(procs: Procs) -> None:
    holder = procs.start([*RUNALWAYS, "run", "--silent", "--name", "nightly", "--", *HOLDER])
    wait_for_line(holder, "ready")
    busy = procs.run([*RUNALWAYS, "status", "--name", "nightly"])
    assert busy.returncode == 0 and f"pid {holder.pid}" in busy.stdout
    finish(holder)
    assert procs.run([*RUNALWAYS, "status", "--name", "nightly"]).returncode == 3


@pytest.mark.clause("R11.5")
def test_backends_lists_each_backend_with_its_capabilities(procs: Procs) -> None:
    listing = procs.run([*RUNALWAYS, "backends"])
    assert listing.returncode == 0
    header, *rows = listing.stdout.splitlines()
    assert header.split() == ["NAME", "HERE", "MECHANISM", "ITS", "LOCK"]
    assert any(row.split()[:2] == [procs.backend, "usable"] for row in rows if row)
    assert "`" not in listing.stdout and "=True" not in listing.stdout  # words, not markup or field dumps
    assert "survives fork" in listing.stdout and "lost on replace" in listing.stdout
    assert "anyone who can read the script can hold it" in listing.stdout


@pytest.mark.clause("R11.5")
def test_backends_json_has_the_declared_capabilities(procs: Procs) -> None:
    from runalways.backends import get_class

    listing = procs.run([*RUNALWAYS, "backends", "--json"])
    assert listing.returncode == 0
    backends = {entry["name"]: entry for entry in json.loads(listing.stdout)["backends"]}
    entry = backends[procs.backend]
    assert (entry["usable"], entry["unavailable"]) == (True, None)
    assert entry["capabilities"] == get_class(procs.backend).capabilities.as_dict()
    assert "`" not in entry["mechanism"] and entry["survives"]


@pytest.mark.clause("R11.7")
@pytest.mark.parametrize("option", ["--version", "-V"])
def test_version_prints_the_version_and_exits_0(fcntl_procs: Procs, option: str) -> None:
    import runalways

    outcome = fcntl_procs.run([*RUNALWAYS, option])
    assert (outcome.returncode, outcome.stdout, outcome.stderr) == (0, f"runalways {runalways.__version__}\n", "")


def _not_a_program(directory: Path) -> Path:
    path = directory / "notes.txt"
    path.write_text("not a program: no #! line, not a binary\n")
    path.chmod(0o755)
    return path


def _no_execute_permission(directory: Path) -> Path:
    path = directory / "job.sh"
    path.write_text("#!/bin/sh\necho ran\n")
    path.chmod(0o644)
    return path


def _dangling_link(directory: Path) -> Path:
    path = directory / "gone.sh"
    path.symlink_to(directory / "removed.sh")
    return path


def _missing_interpreter(directory: Path) -> Path:
    path = directory / "orphan.sh"
    path.write_text("#!/no/such/interpreter\necho ran\n")
    path.chmod(0o755)
    return path


Case = Dict[str, Tuple[Callable[[Path], Path], str]]

CANNOT_RUN: Case = {
    "no execute permission": (_no_execute_permission, "not executable"),
    "a directory": (lambda directory: directory, "is a directory"),
    "not a program": (_not_a_program, "not a program"),
}
NOT_FOUND: Case = {
    "a name not in PATH": (lambda directory: Path("no-such-command-here"), "command not found"),
    "a path that does not exist": (lambda directory: directory / "missing.sh", "not found"),
    "a dangling symbolic link": (_dangling_link, "not found"),
    "an interpreter that does not exist": (_missing_interpreter, "interpreter its #! line names is not found"),
}


@pytest.mark.clause("R11.8")
@pytest.mark.parametrize("case", sorted(CANNOT_RUN))
def test_a_command_that_cannot_run_exits_126(fcntl_procs: Procs, case: str) -> None:
    make, says = CANNOT_RUN[case]
    command = make(fcntl_procs.workdir)
    outcome = fcntl_procs.run([*RUNALWAYS, "run", "--silent", "--", str(command)])
    assert outcome.returncode == 126, outcome
    assert outcome.stderr.startswith(f"runalways: cannot run '{command}': ") and says in outcome.stderr
    assert outcome.stderr.count("\n") == 1 and outcome.stdout == ""


@pytest.mark.clause("R11.8")
@pytest.mark.parametrize("case", sorted(NOT_FOUND))
def test_a_command_that_is_not_found_exits_127(fcntl_procs: Procs, case: str) -> None:
    make, says = NOT_FOUND[case]
    command = make(fcntl_procs.workdir)
    outcome = fcntl_procs.run([*RUNALWAYS, "run", "--silent", "--", str(command)])
    assert outcome.returncode == 127, outcome
    assert outcome.stderr.startswith(f"runalways: cannot run '{command}': ") and says in outcome.stderr
    assert outcome.stderr.count("\n") == 1 and outcome.stdout == ""


@pytest.mark.clause("R11.8")
def test_etc_passwd_is_found_but_cannot_run(procs: Procs) -> None:
    outcome = procs.run([*RUNALWAYS, "run", "--", "/etc/passwd"])
    assert outcome.returncode == 126 and "not executable" in outcome.stderr, outcome
    # Refused before the lock: with another copy holding it, still 126 and not "already running" (0).
    holder = procs.start([*RUNALWAYS, "run", "--name", "job", "--", *HOLDER])
    wait_for_line(holder, "ready")
    refused = procs.run([*RUNALWAYS, "run", "--name", "job", "--", "/etc/passwd"])
    assert refused.returncode == 126 and "not executable" in refused.stderr, refused
    finish(holder)


SPEC = Path(__file__).parent.parent / "SPEC.md"


def _spec_exit_statuses() -> dict[str, set[str]]:
    """The R11.9 table of SPEC.md: command -> the statuses it lists."""
    found: dict[str, set[str]] = {}
    for command, status in re.findall(r"^ *\| `runalways (\w+)` \| (\w+) \|", SPEC.read_text(), re.MULTILINE):
        found.setdefault(command, set()).add(status)
    return found


@pytest.mark.clause("R11.9")
def test_every_exit_status_is_in_the_spec_table_and_in_help(fcntl_procs: Procs) -> None:
    table = _spec_exit_statuses()
    assert set(table) == {"run", "status", "list", "backends", "completion", "doctor"}
    for command, statuses in table.items():
        help_text = fcntl_procs.run([*RUNALWAYS, command, "--help"]).stdout
        section = help_text.split("exit status:\n", 1)[1]
        listed = {line.split()[0] for line in section.splitlines() if line.startswith("  ")}
        assert listed == statuses, (command, listed, statuses)


def _bash_candidates(procs: Procs, words: list[str]) -> list[str]:
    """What bash offers after ``words`` (the last one being completed), with the script sourced."""
    program = (
        'source <("$@" completion bash) && COMP_WORDS=(runalways "${WORDS[@]}") && '
        "COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 )) && _runalways && printf '%s\\n' \"${COMPREPLY[@]}\""
    )
    words_array = " ".join(f"'{word}'" for word in words)
    outcome = procs.run(["bash", "-c", f"WORDS=({words_array}); {program}", "bash", *RUNALWAYS])
    assert outcome.returncode == 0 and outcome.stderr == "", outcome
    return sorted(outcome.stdout.split())


@pytest.mark.clause("R11.10")
def test_bash_completion_completes_commands_options_and_backends(fcntl_procs: Procs) -> None:
    program = 'source <("$@" completion bash) && complete -p runalways'
    registered = fcntl_procs.run(["bash", "-c", program, "bash", *RUNALWAYS])
    assert registered.stdout == "complete -F _runalways runalways\n", registered
    assert _bash_candidates(fcntl_procs, [""]) == ["backends", "completion", "doctor", "list", "run", "status"]
    assert _bash_candidates(fcntl_procs, ["st"]) == ["status"]
    assert _bash_candidates(fcntl_procs, ["-"]) == ["--help", "--version", "-V", "-h"]
    assert _bash_candidates(fcntl_procs, ["run", "--ba"]) == ["--backend"]
    assert fcntl_procs.backend in _bash_candidates(fcntl_procs, ["status", "--backend", ""])
    assert _bash_candidates(fcntl_procs, ["completion", ""]) == ["bash", "zsh"]
    assert "true" in _bash_candidates(fcntl_procs, ["run", "--name", "job", "--", "tru"])  # a command after --
    (fcntl_procs.workdir / "job.py").write_text("")
    assert _bash_candidates(fcntl_procs, ["status", str(fcntl_procs.workdir / "jo")]) == [
        str(fcntl_procs.workdir / "job.py")
    ]


#: Runs an interactive zsh in a pseudo-terminal (zsh/zpty), where completion works as for a
#: person: compinit finds _runalways in $fpath by its #compdef line, the line is typed with a
#: TAB after it, and every candidate offered is written to a file; the shell then exits.
ZSH_DRIVER = r"""
zmodload zsh/zpty || exit 3
zpty shell zsh -f -i
zpty -w shell "PS1= RPROMPT=; fpath=(${(q)1} \$fpath); autoload -Uz compinit; compinit -u -D"
zpty -w shell "compadd() {
  if (( \${@[(I)-[OAD]]} )); then builtin compadd \"\$@\"; return; fi
  local -a hits; builtin compadd -O hits \"\$@\"; print -rl -- \$hits >> ${(q)2}; builtin compadd \"\$@\"
}"
zpty -w shell "comppostfuncs=(exit)"
zpty -w -n shell "$3"$'\t'
while zpty -r shell chunk; do :; done
zpty -d shell
"""


def _zsh_candidates(procs: Procs, line: str) -> list[str]:
    zsh = shutil.which("zsh")
    assert zsh is not None, "zsh is not installed: the README's test command installs it"
    functions = procs.workdir / "zsh-functions"
    if not functions.exists():
        functions.mkdir()
        script = procs.run([*RUNALWAYS, "completion", "zsh"])
        assert script.returncode == 0, script
        (functions / "_runalways").write_text(script.stdout)
        (procs.workdir / "runalways").write_text(f'#!/bin/sh\nexec {shlex.join(RUNALWAYS)} "$@"\n')
        (procs.workdir / "runalways").chmod(0o755)
    driver = procs.workdir / "driver.zsh"
    driver.write_text(ZSH_DRIVER)
    offered = procs.workdir / "offered"
    offered.write_text("")
    path = f"{procs.workdir}{os.pathsep}{os.environ.get('PATH', '')}"
    outcome = procs.run([zsh, "-f", str(driver), str(functions), str(offered), line], env={"PATH": path})
    assert outcome.returncode == 0, outcome
    return sorted(word for word in offered.read_text().split("\n") if word.strip())


@pytest.mark.clause("R11.10")
def test_zsh_completion_completes_commands_options_and_backends(fcntl_procs: Procs) -> None:
    assert _zsh_candidates(fcntl_procs, "runalways ") == ["backends", "completion", "doctor", "list", "run", "status"]
    assert _zsh_candidates(fcntl_procs, "runalways st") == ["status"]
    assert _zsh_candidates(fcntl_procs, "runalways -") == ["--help", "--version", "-V", "-h"]
    assert _zsh_candidates(fcntl_procs, "runalways run --ba") == ["--backend"]
    assert fcntl_procs.backend in _zsh_candidates(fcntl_procs, "runalways status --backend ")
    assert _zsh_candidates(fcntl_procs, "runalways completion ") == ["bash", "zsh"]
    assert "true" in _zsh_candidates(fcntl_procs, "runalways run --name job -- tru")  # a command after --
    (fcntl_procs.workdir / "job.py").write_text("")
    assert _zsh_candidates(fcntl_procs, f"runalways status {fcntl_procs.workdir}/jo") == ["job.py"]


BAD_COMMAND_LINES = [
    ["run"],
    ["completion", "fish"],
    ["run", "--wait", "soon", "--", "true"],
    ["run", "--retry", "x", "--", "true"],
    ["run", "--wait", "1", "--retry", "1", "--", "true"],
    ["status"],
    ["status", "no-such-file.py"],
    ["frobnicate"],
    ["run", "--backend", "no-such-backend", "--", "true"],
    ["run", "--timeout", "soon", "--", "true"],
    ["run", "--kill-after", "5", "--", "true"],
    ["status", "--stale-after", "0", "--name", "job"],
]


@pytest.mark.clause("R11.6")
@pytest.mark.parametrize("argv", BAD_COMMAND_LINES, ids=" ".join)
def test_command_line_errors_are_one_line_and_exit_2(procs: Procs, argv: list[str]) -> None:
    outcome = procs.run([*RUNALWAYS, *argv])
    assert outcome.returncode == 2, outcome
    assert outcome.stderr.count("\n") == 1 and "Traceback" not in outcome.stderr, outcome.stderr


@pytest.mark.clause("R11.6")
def test_help_is_there_for_every_command(procs: Procs) -> None:
    for argv in ([], ["run"], ["status"], ["backends"], ["completion"]):
        outcome = procs.run([*RUNALWAYS, *argv, "--help"])
        assert outcome.returncode == 0 and "usage: runalways" in outcome.stdout


@pytest.mark.clause("R11.1")
def test_run_waits_for_the_lock(procs: Procs) -> None:
    holder = procs.start([*RUNALWAYS, "run", "--silent", "--name", "job", "--", *HOLDER])
    wait_for_line(holder, "ready")
    waiter = procs.start([*RUNALWAYS, "run", "--silent", "--wait", "60", "--name", "job", "--", *HOLDER])
    assert waiter.poll() is None  # waiting, not refused
    finish(holder)
    wait_for_line(waiter, "ready")  # got in once the holder ended
    assert finish(waiter).returncode == 0


@pytest.mark.clause("R11.3")
def test_the_command_dies_with_runalways_and_never_runs_on_unguarded(procs: Procs) -> None:
    command = "import os, sys; print(os.getpid(), flush=True); sys.stdin.read()"
    wrapper = procs.start([*RUNALWAYS, "run", "--silent", "--name", "job", "--", sys.executable, "-c", command])
    command_pid = int(read_line(wrapper))
    kill(wrapper)  # SIGKILL: runalways cannot pass anything on, and its lock is gone
    # The kernel kills the command too, so a next start never runs beside it.
    wait_until(lambda: not os.path.exists(f"/proc/{command_pid}") or _zombie(command_pid), "the command to die")
    follower = procs.start([*RUNALWAYS, "run", "--silent", "--name", "job", "--", *HOLDER])
    wait_for_line(follower, "ready")
    finish(follower)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.clause("R11.6")
def test_a_reader_that_goes_away_gets_no_traceback(procs: Procs) -> None:
    reader_read, reader_write = os.pipe()
    os.close(reader_read)  # like `runalways backends | head -0`: nobody reads
    listing = subprocess.run(
        [*RUNALWAYS, "backends"], stdout=reader_write, stderr=subprocess.PIPE, env=procs.env(), timeout=TIMEOUT
    )
    os.close(reader_write)
    assert listing.returncode == 128 + signal.SIGPIPE and listing.stderr == b""


API_HOLDER = """
import sys
import runalways.api

with runalways.api.lock(name="by-the-api"):
    print("ready", flush=True)
    sys.stdin.read()
"""


@pytest.mark.clause("R11.11")
def test_list_shows_locks_taken_three_ways_and_never_a_gone_holder(procs: Procs, capabilities: object) -> None:
    import json

    guarded = procs.hold(procs.script("job.py"))
    wrapped = procs.start([*RUNALWAYS, "run", "--name", "by-run", "--", *HOLDER])
    wait_for_line(wrapped, "ready")
    api = procs.hold(procs.script("api.py", API_HOLDER, header=""))
    listed = procs.run([*RUNALWAYS, "list", "--json"])
    assert listed.returncode == 0, listed
    entries = {entry["pid"]: entry for entry in map(json.loads, listed.stdout.splitlines())}
    holders = {guarded.pid: str(procs.workdir / "job.py"), wrapped.pid: "by-run", api.pid: "by-the-api"}
    if capabilities.across_hosts:  # type: ignore[attr-defined]
        # A lock held on a server, for every host: status --name shows it, list does not.
        assert not set(holders) & set(entries), listed
        for process in (guarded, wrapped, api):
            finish(process)
        return
    for pid, target in holders.items():
        entry = entries.get(pid)
        assert entry is not None and entry["held"] is True, (pid, listed)
        assert entry["target"].endswith(target) or entry["target"] == target, entry
        assert entry["user"] and entry["started"] and entry["age_seconds"] is not None, entry
    table = procs.run([*RUNALWAYS, "list"])
    assert table.stdout.startswith("AGE ") and all(str(pid) in table.stdout for pid in holders), table
    kill(wrapped)  # SIGKILL: it leaves its lock file (or pidfile) behind, and holds nothing
    finish(guarded)
    after = procs.run([*RUNALWAYS, "list", "--json"])
    pids = {entry["pid"] for entry in map(json.loads, after.stdout.splitlines())}
    assert not pids & {guarded.pid, wrapped.pid} and api.pid in pids, after
    finish(api)
