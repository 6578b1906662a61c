"""The docs stay true: the README's commands are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section, flags=re.DOTALL)


def test_readme_starts_with_two_commands() -> None:
    serve, test = readme_commands()
    assert serve.endswith("tvbridge serve")
    assert "pytest" in test


def test_ci_runs_the_readmes_test_command() -> None:
    _, test = readme_commands()
    ci = (REPO / ".ci" / "run").read_text()
    assert f'TEST_COMMAND="{test}"' in ci
    assert 'eval "$TEST_COMMAND"' in ci


PLUGINS_GUIDE = REPO / "docs" / "plugins.md"


def guide_headings() -> set[str]:
    return set(re.findall(r"^### `(\w+)`$", PLUGINS_GUIDE.read_text(), flags=re.MULTILINE))


def test_every_broker_protocol_member_has_a_section_in_the_plugin_guide() -> None:
    """docs/plugins.md has a `### \\`name\\`` section for every method and attribute of the Broker protocol,
    so the guide cannot fall behind the interface (datasette's test_docs, for hooks)."""
    from tvbridge.broker import Broker  # noqa: PLC0415 - the module under documentation

    members = {name for name in vars(Broker) if not name.startswith("_")} | set(Broker.__annotations__)
    assert members, "the protocol has no members?"
    assert sorted(members - guide_headings()) == []


def test_every_public_name_of_the_broker_module_is_in_the_plugin_guide() -> None:
    """Every name a plugin can import from tvbridge.broker is mentioned in the guide."""
    import tvbridge.broker  # noqa: PLC0415 - the module under documentation

    text = PLUGINS_GUIDE.read_text()
    assert [name for name in tvbridge.broker.__all__ if f"`{name}" not in text] == []
    assert all(hasattr(tvbridge.broker, name) for name in tvbridge.broker.__all__)


def test_every_conformance_check_and_settings_key_is_in_the_plugin_guide() -> None:
    """The guide's table lists every check of the conformance kit and every key of its settings file."""
    from tvbridge.conformance import kit, spec  # noqa: PLC0415 - the modules under documentation

    text = PLUGINS_GUIDE.read_text()
    checks = [name for name in vars(kit) if name.startswith("test_")]
    assert len(checks) >= 10
    assert [name for name in checks if f"`{name}`" not in text] == []
    assert [key for key in spec.TOP_KEYS if f"| `{key}` |" not in text] == []


def test_the_guides_sample_matches_the_sample_plugin() -> None:
    """The entry point and conformance file quoted in the guide are the sample plugin's real ones."""
    text = PLUGINS_GUIDE.read_text()
    sample = REPO / "plugins" / "tvbridge-samplebroker"
    assert 'sample = "tvbridge_samplebroker:SampleBroker"' in (sample / "pyproject.toml").read_text()
    assert 'sample = "tvbridge_samplebroker:SampleBroker"' in text
    conformance = (sample / "conformance.toml").read_text()
    for line in ('venue = "tvbridge_samplebroker.fake_api:conformance_venue"', 'symbol = "REJECTME"'):
        assert line in conformance
        assert line in text
