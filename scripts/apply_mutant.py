"""Check one mutmut mutant by hand: apply its diff to this checkout, run the given tests, put the file back.

    python scripts/apply_mutant.py WORK/GROUP NAME -- tests/test_x.py -k something

WORK/GROUP is a run directory of scripts/mutation.sh (its mutmut prints the mutant's diff); NAME is mutmut's name
of the mutant. Prints KILLED (the tests failed under it) or SURVIVED. For kills mutmut cannot count itself: a test
added after the run, or a test whose kill happens in a `tvbridge serve` subprocess (it runs this checkout's code
when the project is installed editable). The file is restored even when the run is interrupted; never run two at
once in one checkout.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def hunk(diff: str) -> tuple[str, list[tuple[str, str]]]:
    """The file, and the (text the mutant replaces, its replacement) to try in turn: the hunk with its context
    lines, then its changed lines alone (mutmut's diff is of one function, dedented, and leaves a multi-line
    docstring's continuation lines as they were, so the context may not match the file)."""
    lines = diff.splitlines()
    path = next(line[4:] for line in lines if line.startswith("--- "))
    if path.startswith("tvbridge_brokers/"):  # the copies move the broker package to the top level
        path = f"brokers/{path}"
    body = lines[next(i for i, line in enumerate(lines) if line.startswith("@@")) + 1 :]
    with_context = (
        "\n".join(line[1:] for line in body if not line.startswith("+")),
        "\n".join(line[1:] for line in body if not line.startswith("-")),
    )
    changed_only = (
        "\n".join(line[1:] for line in body if line.startswith("-")),
        "\n".join(line[1:] for line in body if line.startswith("+")),
    )
    return path, [with_context, changed_only]


def indented(text: str, by: str) -> str:
    return "\n".join(by + line if line else line for line in text.split("\n"))


def mutated(source: str, name: str, changes: list[tuple[str, str]]) -> str:
    """`source` with the mutant applied inside its function (a method's diff is dedented one level)."""
    head = name.split("__mutmut", maxsplit=1)[0]
    function = head.split("ǁ")[-1] if "ǁ" in head else head.rsplit(".", 1)[-1].removeprefix("x_")
    start = re.search(rf"def {re.escape(function)}\(", source)
    if start is None:
        raise SystemExit(f"{name}: no function {function} in the file")
    for old, new in changes:
        for by in ("", "    ", "        "):
            at = source.find(indented(old, by), source.rfind("\n", 0, start.start()) + 1)  # the def's indent too
            if old and at >= 0:
                return source[:at] + indented(new, by) + source[at + len(indented(old, by)) :]
    raise SystemExit(f"{name}: its diff does not apply to this checkout (the code changed since the run)")


def main(argv: list[str]) -> int:
    if "--" not in argv or argv.index("--") != 2:
        raise SystemExit(__doc__)
    rundir, name, tests = Path(argv[0]), argv[1], argv[3:]
    mutmut = rundir.parent / "venv" / "bin" / "mutmut"
    diff = subprocess.run([mutmut, "show", name], cwd=rundir, capture_output=True, text=True, check=True).stdout
    path, changes = hunk(diff)
    target = REPO / path
    source = target.read_text(encoding="utf-8")
    target.write_text(mutated(source, name, changes), encoding="utf-8")
    try:
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
            cwd=REPO,
            capture_output=True,
            text=True,
            env={**os.environ, "CI": "true"},
            check=False,
        )
    finally:
        target.write_text(source, encoding="utf-8")
    summary = [line for line in run.stdout.splitlines() if re.search(r"passed|failed|error", line)][-1:]
    print(name, "KILLED" if run.returncode else "SURVIVED", *summary)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
