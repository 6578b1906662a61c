"""schemathesis against a live `tvbridge serve`: generated requests for every operation in /openapi.json
(valid and invalid data, coverage, fuzzing and stateful phases) get no 5xx, and every answer matches the
document: its status is listed, its content type, headers and body conform.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from helpers import SECRET
from ops_process import OpsServer

ADMIN_TOKEN = "admin-token-for-schemathesis-0123456789"
CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_headers_conformance,response_schema_conformance"
)


def schemathesis() -> str:
    found = shutil.which("st", path=str(Path(sys.executable).parent)) or shutil.which("st")
    if found is None:
        pytest.fail("schemathesis is a test dependency: pip install -e '.[test]'")
    return found


@pytest.mark.timeout(300)
def test_live_server_conforms_to_its_openapi_document(tmp_path: Path) -> None:
    """Hundreds of generated requests, with the admin token (so admin routes are reached too): schemathesis
    reports no failure."""
    import subprocess  # noqa: PLC0415 - only here

    env = {
        "WEBHOOK_SECRET": SECRET,
        "TVBRIDGE_SERVER__ADMIN_TOKEN": ADMIN_TOKEN,
        "TVBRIDGE_LOGGING__FILE": "",
    }
    server = OpsServer(tmp_path, env).start()
    try:
        result = subprocess.run(
            [
                schemathesis(),
                "run",
                f"{server.url}/openapi.json",
                f"--checks={CHECKS}",
                "--max-examples=25",
                "--seed=20261125",
                "--generation-database=none",
                # an event stream never ends, so it cannot be read whole; tests/test_status.py covers it
                "--exclude-path=/status/events",
                "--request-timeout=10",
                f"--header=Authorization: Bearer {ADMIN_TOKEN}",
                "--no-color",
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
    finally:
        assert server.stop() == 0, server.output()
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
