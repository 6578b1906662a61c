"""Where secrets come from, and the refusal of weak ones when real money is at stake."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest

from tvbridge.config import load_config
from tvbridge.errors import ConfigError
from tvbridge.parsing import make_converter
from tvbridge.secretstore import resolve_credentials

CONVERTER = make_converter()
LIVE = {"DHAN_CLIENT_ID": "1", "DHAN_ACCESS_TOKEN": "t", "ENABLE_DHAN": "true"}


def test_generated_once_and_kept(tmp_path: Path) -> None:
    config = load_config(None, CONVERTER, {"TVBRIDGE_SERVER__DATA_DIR": str(tmp_path)}, tmp_path)
    first = resolve_credentials(config)
    second = resolve_credentials(config)
    assert first.generated == ("secret", "admin_token")
    assert second.generated == ()
    assert first.secret == second.secret
    assert stat.S_IMODE((tmp_path / "admin_token.txt").stat().st_mode) == 0o600
    assert first.secret not in repr(first)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WEBHOOK_SECRET": "short-secret"}, "auth.secret is shorter than 16 characters"),
        (
            {"WEBHOOK_SECRET": "a-strong-secret-0123456789", "TVBRIDGE_AUTH__PATH_TOKEN": "abc"},
            "auth.path_token is shorter than 16 characters; a path token alone authenticates live orders (dhan)",
        ),
    ],
)
def test_weak_credentials_refused_when_live(tmp_path: Path, env: dict[str, str], message: str) -> None:
    config = load_config(None, CONVERTER, {**LIVE, **env, "TVBRIDGE_SERVER__DATA_DIR": str(tmp_path)}, tmp_path)
    with pytest.raises(ConfigError, match=re.escape(message)):
        resolve_credentials(config)


def test_weak_secret_tolerated_on_paper(tmp_path: Path) -> None:
    config = load_config(
        None, CONVERTER, {"WEBHOOK_SECRET": "GTcl4", "TVBRIDGE_SERVER__DATA_DIR": str(tmp_path)}, tmp_path
    )
    assert resolve_credentials(config).secret == "GTcl4"
