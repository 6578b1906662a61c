"""The mutants of a scripts/mutation.sh group that were not killed, each with its diff, sorted by kind.

    python scripts/mutation_survivors.py WORK/GROUP [GLOB...]

One block a mutant: its name, its outcome (`survived`, `no tests`), its kind and its changed lines. The kind
`case` marks a mutant whose every changed line differs from the code only in letter case, outside single-quoted
SQL literals (which SQLite compares byte for byte): SQL keywords and names, a codec or header name, a
`sqlite3.Row` key. Such a mutant is usually equivalent (SQLite reads keywords and names, aiohttp
header names, Python codec names without regard to case), but each still has to be read: the case of a symbol or
of a value compared byte for byte is not. The last line counts them: `mutation: GROUP: K/T killed (P%); of the
N not killed, C change only letter case; without those, K/(T-C) (Q%)`. GLOBs (mutmut's names) restrict the count
to some functions, as `mutants_of` does in the script.
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path


def changed_lines(rundir: Path, name: str) -> tuple[list[str], list[str]]:
    mutmut = rundir.parent / "venv" / "bin" / "mutmut"
    diff = subprocess.run([mutmut, "show", name], cwd=rundir, capture_output=True, text=True, check=True).stdout
    lines = diff.splitlines()
    removed = [line[1:] for line in lines if line.startswith("-") and not line.startswith("---")]
    added = [line[1:] for line in lines if line.startswith("+") and not line.startswith("+++")]
    return removed, added


def case_only(removed: list[str], added: list[str]) -> bool:
    """Every changed line differs only in letter case, and none inside a single-quoted SQL literal (`'SUCCESS'`,
    a JSON path `'$.position_key'`): SQLite compares those byte for byte, so such a change is a real one."""
    return (
        bool(removed)
        and len(removed) == len(added)
        and all(
            a != b and a.lower() == b.lower() and not _in_sql_literal(a, b) for a, b in zip(removed, added, strict=True)
        )
    )


def _in_sql_literal(a: str, b: str) -> bool:
    """Whether a character that differs between `a` and `b` sits between single quotes in `a`."""
    return any(x != y and a.count("'", 0, i) % 2 == 1 for i, (x, y) in enumerate(zip(a, b, strict=True)))


def main(argv: list[str]) -> int:
    if not argv:
        raise SystemExit(__doc__)
    rundir, globs = Path(argv[0]), argv[1:]
    outcomes: dict[str, str] = {}
    for line in (rundir / "report.txt").read_text(encoding="utf-8").splitlines():
        m = re.match(r"\s*(\S+__mutmut_\d+): (.+)$", line)
        if m and (not globs or any(fnmatch.fnmatch(m.group(1), g) for g in globs)):
            outcomes[m.group(1)] = m.group(2).strip()
    counts = Counter(outcomes.values())
    killed, total = counts["killed"] + counts["timeout"], len(outcomes)
    left = [name for name, outcome in outcomes.items() if outcome not in {"killed", "timeout"}]
    cased = 0
    for name in left:
        removed, added = changed_lines(rundir, name)
        kind = "case" if case_only(removed, added) else "other"
        cased += kind == "case"
        print(f"{name}: {outcomes[name]}, {kind}")
        for a, b in zip(removed, added, strict=False):
            print(f"    - {a.strip()}\n    + {b.strip()}")
    group = rundir.name
    rest = total - cased
    print(
        f"mutation: {group}: {killed}/{total} killed ({100 * killed / total:.1f}%); of the {len(left)} not killed,"
        f" {cased} change only letter case; without those, {killed}/{rest} ({100 * killed / rest:.1f}%)"
        if total and rest
        else f"mutation: {group}: no mutants"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
