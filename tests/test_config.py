"""Loading the config: sources and their precedence, the guide's variables, and one-line errors."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from tvbridge.config import effective_settings, load_config
from tvbridge.errors import ConfigError
from tvbridge.parsing import make_converter


def load(tmp_path: Path, toml: str | None = None, env: dict[str, str] | None = None) -> object:
    path = None
    if toml is not None:
        path = tmp_path / "config.toml"
        path.write_text(toml)
    return load_config(path, make_converter(), env or {}, tmp_path)


def test_defaults_are_the_safe_first_run(tmp_path: Path) -> None:
    """No config at all: loopback only, an unprivileged port, the paper account, guards on."""
    config = load_config(None, make_converter(), {}, tmp_path)
    assert config.server.host == "127.0.0.1"
    assert config.server.port == 8080
    assert config.routing.accounts == ("paper",)
    assert config.accounts["paper"]["broker"] == "paper"
    assert config.auth.secret == ""
    assert config.dedupe.window_s == 60
    assert config.alerts.max_age_s == 300
    assert config.limits.max_body_bytes == 65536
    assert config.live_accounts == []


def test_the_guides_variables_override_the_file(tmp_path: Path) -> None:
    """WEBHOOK_* from the environment win over config.toml."""
    toml = '[server]\nhost = "0.0.0.0"\nport = 9000\n[auth]\nsecret = "from-file-0123456789"\n'
    env = {"WEBHOOK_HOST": "127.0.0.2", "WEBHOOK_PORT": "8181", "WEBHOOK_SECRET": "from-env-0123456789"}
    (tmp_path / "config.toml").write_text(toml)
    config = load_config(tmp_path / "config.toml", make_converter(), env, tmp_path)
    assert (config.server.host, config.server.port) == ("127.0.0.2", 8181)
    assert config.auth.secret == "from-env-0123456789"


def test_dotenv_file_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    """A .env in the working directory works like the guide's; real environment variables beat it."""
    (tmp_path / ".env").write_text('WEBHOOK_PORT=8282\nWEBHOOK_SECRET="quoted-secret-0123456789"\n')
    config = load_config(None, make_converter(), {"WEBHOOK_PORT": "8383"}, tmp_path)
    assert config.server.port == 8383
    assert config.auth.secret == "quoted-secret-0123456789"


def test_any_key_as_tvbridge_section_key(tmp_path: Path) -> None:
    """TVBRIDGE_<SECTION>__<KEY> sets any key, with TOML-typed values."""
    env = {
        "TVBRIDGE_DEDUPE__WINDOW_S": "30",
        "TVBRIDGE_RATE_LIMIT__ENABLED": "false",
        "TVBRIDGE_IP_ALLOWLIST__ALLOW": '["10.0.0.0/8"]',
        "TVBRIDGE_AUTH__PATH_TOKEN": "12345678901234567890",
    }
    config = load_config(None, make_converter(), env, tmp_path)
    assert config.dedupe.window_s == 30
    assert config.rate_limit.enabled is False
    assert config.ip_allowlist.allow == ("10.0.0.0/8",)
    assert config.auth.path_token == "12345678901234567890"


def test_a_list_valued_secret_key_from_the_environment_is_a_list(tmp_path: Path) -> None:
    """`notify.urls` is a secret key (its URLs carry bot tokens), so it is not typed like the other keys; a TOML
    array in the variable is still the list, never one string split into its characters. A secret that only
    starts like an array stays the text it is."""
    env = {
        "TVBRIDGE_NOTIFY__URLS": '["json://127.0.0.1:9/hook", "json://127.0.0.1:9/other"]',
        "TVBRIDGE_AUTH__SECRET": "[not-an-array-0123456789",
    }
    config = load_config(None, make_converter(), env, tmp_path)
    assert config.notify.urls == ("json://127.0.0.1:9/hook", "json://127.0.0.1:9/other")
    assert config.auth.secret == "[not-an-array-0123456789"


def test_dhan_variables_make_dhan_the_default_route(tmp_path: Path) -> None:
    """DHAN_CLIENT_ID + DHAN_ACCESS_TOKEN route alerts to a dhan account; ENABLE_DHAN makes it live."""
    env = {"DHAN_CLIENT_ID": "1000000001", "DHAN_ACCESS_TOKEN": "tok", "ENABLE_DHAN": "true"}
    config = load_config(None, make_converter(), env, tmp_path)
    assert config.routing.accounts == ("dhan",)
    assert config.accounts["dhan"] == {"client_id": "1000000001", "access_token": "tok", "live": True, "broker": "dhan"}
    assert config.live_accounts == ["dhan"]
    config = load_config(None, make_converter(), {**env, "ENABLE_DHAN": "false"}, tmp_path)
    assert config.live_accounts == []


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        ('[server]\nport = "eighty"\n', {}, "server.port: must be a whole number, got 'eighty'"),
        ("", {"WEBHOOK_PORT": "eighty"}, "server.port: must be a whole number, got 'eighty'"),
        ("[sever]\nport = 80\n", {}, "(top level): unknown keys: sever"),
        ("[dedupe]\nwindow = 30\n", {}, "dedupe: unknown keys: window"),
        ("[dedupe]\nwindow_s = -1\n", {}, "dedupe: window_s must be >= 0, got -1.0"),
        ('[alerts]\non_leg_failure = "retry"\n', {}, "alerts.on_leg_failure"),
        ('[routing]\naccounts = ["live"]\n', {}, "routing.accounts: no [accounts.live] table for account 'live'"),
        ("[server\n", {}, "not valid TOML"),
        # TOML has types: a number, a boolean or a path given as other TOML types is refused, not converted
        ('[server]\nresponse_deadline_s = "2.5"\n', {}, "server.response_deadline_s: must be a number, got '2.5'"),
        ("[server]\nresponse_deadline_s = true\n", {}, "server.response_deadline_s: must be a number, got true"),
        ("[server]\nresponse_deadline_s = [1]\n", {}, "server.response_deadline_s: must be a number, got a list"),
        ('[metrics]\nenabled = "false"\n', {}, "metrics.enabled: must be true or false, got 'false'"),
        ("[server]\ndata_dir = true\n", {}, "server.data_dir: expected a value, got true"),
        ('[risk]\nmax_notional_per_order = "1e3"\n', {}, "risk.max_notional_per_order: must be a number, got '1e3'"),
    ],
)
def test_bad_values_stop_the_start_with_one_line_naming_the_key(
    tmp_path: Path, toml: str, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, toml, env)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_holidays_may_be_bare_toml_dates(tmp_path: Path) -> None:
    """`extra_holidays = [2026-11-24]` (a TOML date, not a string) is that date, as the shipped comment shows."""
    (tmp_path / "config.toml").write_text('[sessions]\nextra_holidays = [2026-11-24, "2026-11-25"]\n')
    config = load_config(tmp_path / "config.toml", make_converter(), {}, tmp_path)
    assert config.sessions.extra_holidays == (date(2026, 11, 24), date(2026, 11, 25))


def test_effective_settings_mask_every_secret(tmp_path: Path) -> None:
    """check-config's view shows that secrets are set, never their values."""
    env = {
        "WEBHOOK_SECRET": "s3cret-value-0123456789",
        "DHAN_CLIENT_ID": "1",
        "DHAN_ACCESS_TOKEN": "tok-XYZ",
        "TVBRIDGE_SERVER__ADMIN_TOKEN": "admin-ABC",
    }
    shown = str(effective_settings(load_config(None, make_converter(), env, tmp_path), make_converter()))
    for secret in env.values():
        if secret != "1":
            assert secret not in shown
    assert "********" in shown


REPO = Path(__file__).resolve().parent.parent


def test_shipped_config_toml_is_the_defaults() -> None:
    """config.toml in the repo loads cleanly and changes nothing: it documents the defaults."""
    shipped = load_config(REPO / "config.toml", make_converter(), {}, REPO)
    assert shipped == load_config(None, make_converter(), {}, REPO)


def test_shipped_config_toml_shows_every_key() -> None:
    """Every key of every section appears in config.toml (set or commented), so the file stays the reference."""
    import typing  # noqa: PLC0415 - only here

    import attrs  # noqa: PLC0415 - only here

    from tvbridge.config import Config  # noqa: PLC0415 - only here

    text = (REPO / "config.toml").read_text()
    from tvbridge.config import StrategyConfig  # noqa: PLC0415 - only here

    strategies = text.split("# [strategies.NAME]", 1)[1].split("\n\n", 1)[0]
    for key in attrs.fields(StrategyConfig):  # commented: there are no strategies by default
        assert f"# {key.name} = " in strategies, f"strategies.NAME.{key.name} is not in config.toml"
    # the sections' classes from the annotations themselves: a field's `type` is still a string until something
    # resolves them (cattrs, when a config is first structured), so alone this test would read strings
    classes = typing.get_type_hints(Config)
    for section in attrs.fields(Config):
        if section.name in {"accounts", "strategies"}:
            continue
        assert f"[{section.name}]" in text, section.name
        block = text.split(f"[{section.name}]", 1)[1].split("\n[", 1)[0]
        for key in attrs.fields(classes[section.name]):
            assert f"{key.name} = " in block, f"{section.name}.{key.name} is not in config.toml"


def test_plugin_secrets_are_masked_by_name(tmp_path: Path) -> None:
    """A third-party plugin's client_secret or refresh_token is masked like ours; its ids stay strings."""
    env = {
        "TVBRIDGE_ACCOUNTS__X__CLIENT_SECRET": "cs-123",
        "TVBRIDGE_ACCOUNTS__X__REFRESH_TOKEN": "rt-456",
        "TVBRIDGE_ACCOUNTS__X__CLIENT_ID": "1100012345",
    }
    config = load_config(None, make_converter(), env, tmp_path)
    assert config.accounts["x"]["client_id"] == "1100012345"
    shown = str(effective_settings(config, make_converter()))
    assert "cs-123" not in shown
    assert "rt-456" not in shown
    assert "1100012345" in shown
