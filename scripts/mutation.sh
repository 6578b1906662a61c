#!/usr/bin/env bash
# Mutation testing on the money paths (docs/testing.md): mutmut over the modules where a mistake costs money or
# leaks a secret. Too slow for every CI run (tens of minutes on 2 cores); run it before changing those modules'
# tests, and record the score in docs/testing.md.
#
#   scripts/mutation.sh [WORKDIR]        default WORKDIR: a new temporary directory
#
# It works on a copy of the committed tree (git archive HEAD), never on this checkout: mutmut rewrites the code it
# mutates. In the copy the broker package moves from brokers/ to the top level, because mutmut imports mutated
# code from mutants/<path>, and tvbridge_brokers is only importable by that name from a top-level folder.
# Only in-process tests are selected: a subprocess server imports the installed (unmutated) code, so it could
# neither kill a mutant nor tell mutmut which tests reach which function.
# Results: WORKDIR/mutants (mutmut results / mutmut show NAME, run from WORKDIR) and WORKDIR/mutation-report.txt.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$(mktemp -d -t tvbridge-mutation.XXXXXX)}"
mkdir -p "$work"
cd "$repo"
git archive HEAD | tar -x -C "$work"
cd "$work"
mv brokers/tvbridge_brokers ./tvbridge_brokers
python3 - <<'PY'
import re, pathlib
p = pathlib.Path("pyproject.toml")
text = p.read_text()
text = text.replace('where = [".", "brokers"]', 'where = ["."]')
text = text.replace('include = ["tvbridge*"]', 'include = ["tvbridge", "tvbridge.*", "tvbridge_brokers", "tvbridge_brokers.*"]')
text += '''
[tool.mutmut]
source_paths = ["tvbridge", "tvbridge_brokers"]
only_mutate = [
    "tvbridge/middlewares/auth.py",
    "tvbridge/middlewares/dedupe.py",
    "tvbridge/executor.py",
    "tvbridge/recovery.py",
    "tvbridge/journal.py",
    "tvbridge/orderlog.py",
    "tvbridge/risk.py",
    "tvbridge/parsing.py",
    "tvbridge_brokers/dhan/mapping.py",
]
pytest_add_cli_args_test_selection = [
    "tests/middlewares/test_auth.py",
    "tests/middlewares/test_dedupe.py",
    "tests/test_webhook.py",
    "tests/test_parsing.py",
    "tests/test_orderlog.py",
    "tests/test_risk.py",
    "tests/test_unknown_outcome.py",
    "tests/test_sqlite.py",
    "tests/test_deadline.py",
    "tests/test_paper_webhook.py",
    "tests/test_tradingday.py",
    "tests/brokers/test_dhan_orders.py",
    "tests/brokers/test_dhan_dryrun.py",
    "tests/brokers/test_dhan_errors.py",
    "tests/brokers/test_dhan_cancel.py",
]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x", "-p", "no:randomly"]
also_copy = ["plugins", "bench", "docs", "config.toml", "README.md", "deploy", "scripts", "CHANGELOG.md", "brokers"]
'''
p.write_text(text)
PY
python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]' -e plugins/tvbridge-samplebroker 'mutmut==3.8.1'
export CI=true
.venv/bin/mutmut run --max-children "${MUTATION_JOBS:-2}" || true
.venv/bin/mutmut results --all true > mutation-report.txt 2>&1 || .venv/bin/mutmut results > mutation-report.txt 2>&1 || true
python3 - <<'PY'
import collections, re, pathlib
counts = collections.Counter()
per_file = collections.defaultdict(collections.Counter)
for line in pathlib.Path("mutation-report.txt").read_text().splitlines():
    m = re.match(r"\s*([\w.]+)__mutmut_\d+: (.+)$", line)
    if m:
        status = m.group(2).strip()
        counts[status] += 1
        per_file[m.group(1).rsplit(".x", 1)[0].rsplit(".xǁ", 1)[0]][status] += 1
print("mutants by outcome:", dict(counts))
killed = counts["killed"] + counts.get("timeout", 0)
total = sum(counts.values()) - counts.get("skipped", 0)
if total:
    print(f"score: {killed}/{total} = {100 * killed / total:.1f}%")
PY
echo "mutation: report in $work/mutation-report.txt"
