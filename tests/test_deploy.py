"""deploy/ works with the real tools: nginx and Caddy run the shipped configs in front of a live tvbridge (with
a test CA, server certificate, client certificates and loopback ports swapped in), systemd-analyze accepts the
unit and rates its hardening.

What the proxies must do: forward `POST /webhook` from a client that presents a certificate with CN
`TradingView Webhooks` signed by a trusted CA, answer 403 to a client with another name or no certificate, and
keep every other path (/metrics, /openapi.json, ...) private (404).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest
from helpers import ClientFactory, alert, with_accounts
from ops_tools import free_port, require_tool

from tvbridge.config import Config
from tvbridge.halt import halt_path, set_halt
from tvbridge.keys import CONFIG

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
WAIT_S = 20.0


@attrs.frozen
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    tradingview: tuple[Path, Path]
    stranger: tuple[Path, Path]


def _openssl(*args: str, cwd: Path) -> None:
    openssl = require_tool("openssl", "openssl")
    subprocess.run([openssl, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _issue(directory: Path, name: str, subject: str, *, server: bool) -> tuple[Path, Path]:
    key, csr, cert = directory / f"{name}.key", directory / f"{name}.csr", directory / f"{name}.pem"
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-subj", subject, "-out", str(csr), cwd=directory
    )
    ext = directory / f"{name}.ext"
    usage = "serverAuth" if server else "clientAuth"
    ext.write_text(f"extendedKeyUsage={usage}\n" + ("subjectAltName=IP:127.0.0.1,DNS:localhost\n" if server else ""))
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-extfile", str(ext), "-out", str(cert), cwd=directory,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A test CA, a server certificate for 127.0.0.1, and two client certificates."""
    directory = tmp_path_factory.mktemp("pki")
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=tvbridge test CA", cwd=directory,
    )  # fmt: skip
    server_cert, server_key = _issue(directory, "server", "/CN=localhost", server=True)
    return Pki(
        ca=directory / "ca.pem",
        server_cert=server_cert,
        server_key=server_key,
        tradingview=_issue(directory, "tradingview", "/O=TradingView/CN=TradingView Webhooks", server=False),
        stranger=_issue(directory, "stranger", "/CN=Someone Else", server=False),
    )


def client_ssl(pki: Pki, cert: tuple[Path, Path] | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    return context


async def run_tool(command: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, check=False, timeout=60, env=env
    )


async def wait_listening(port: int, proc: asyncio.subprocess.Process, log: Path) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while loop.time() < deadline:
        if proc.returncode is not None:
            break
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise AssertionError(f"not listening on {port}: {log.read_text() if log.exists() else ''}")


@contextlib.asynccontextmanager
async def running(command: list[str], port: int, log: Path, env: dict[str, str] | None = None) -> AsyncIterator[None]:
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(*command, stdout=out, stderr=out, env=env)
    try:
        await wait_listening(port, proc, log)
        yield
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), WAIT_S)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def check_proxy(base: str, pki: Pki) -> None:
    """The behaviour both proxies must have (see the module docstring)."""

    async def post(cert: tuple[Path, Path] | None, path: str = "/webhook") -> tuple[int, dict[str, object] | None]:
        connector = aiohttp.TCPConnector(ssl=client_ssl(pki, cert), family=socket.AF_INET)
        async with aiohttp.ClientSession(connector=connector) as session, session.post(base + path, json=alert()) as r:
            body = await r.json() if r.content_type == "application/json" else None
            return r.status, body

    status, body = await post(pki.tradingview)
    assert status == 200, body
    assert body is not None
    assert body["status"] == "success"
    assert (await post(pki.stranger))[0] == 403
    assert (await post(None))[0] == 403
    connector = aiohttp.TCPConnector(ssl=client_ssl(pki, pki.tradingview), family=socket.AF_INET)
    async with aiohttp.ClientSession(connector=connector) as session:
        for path in ("/metrics", "/openapi.json", "/health"):
            async with session.get(base + path) as response:
                assert response.status == 404, path


async def test_nginx_runs_the_shipped_config_in_front_of_tvbridge(
    make_client: ClientFactory, config: Config, pki: Pki, tmp_path: Path
) -> None:
    """deploy/nginx/tvbridge.conf passes `nginx -t`, then, running, forwards TradingView's certificate holder to
    tvbridge and refuses everyone else (see the module docstring)."""
    nginx = require_tool("nginx", "nginx-light")
    client = await make_client(config)
    http_port, https_port = free_port(), free_port()
    site = (DEPLOY / "nginx" / "tvbridge.conf").read_text()
    for old, new in {
        "listen 80;": f"listen 127.0.0.1:{http_port};",
        "listen 443 ssl;": f"listen 127.0.0.1:{https_port} ssl;",
        "/etc/letsencrypt/live/tvbridge.example.com/fullchain.pem": str(pki.server_cert),
        "/etc/letsencrypt/live/tvbridge.example.com/privkey.pem": str(pki.server_key),
        "/etc/ssl/certs/ca-certificates.crt": str(pki.ca),
        "http://127.0.0.1:8080": f"http://127.0.0.1:{client.port}",
    }.items():
        assert old in site, old
        site = site.replace(old, new)
    (tmp_path / "site.conf").write_text(site)
    main = tmp_path / "nginx.conf"
    temp = "\n".join(
        f"    {kind}_temp_path {tmp_path / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    main.write_text(
        ("user root;\n" if os.geteuid() == 0 else "")
        + f"daemon off;\npid {tmp_path / 'nginx.pid'};\nerror_log {tmp_path / 'error.log'} info;\n"
        + "events { worker_connections 64; }\n"
        + f"http {{\n    access_log {tmp_path / 'access.log'};\n{temp}\n    include {tmp_path / 'site.conf'};\n}}\n"
    )
    args = [nginx, "-c", str(main), "-p", str(tmp_path), "-e", str(tmp_path / "error.log")]
    checked = await run_tool([*args, "-t"])
    assert checked.returncode == 0, checked.stderr
    async with running(args, https_port, tmp_path / "nginx.out"):
        await check_proxy(f"https://127.0.0.1:{https_port}", pki)


async def test_caddy_runs_the_shipped_config_in_front_of_tvbridge(
    make_client: ClientFactory, config: Config, pki: Pki, tmp_path: Path
) -> None:
    """deploy/Caddyfile passes `caddy validate` as shipped, then, running with the test certificates, behaves as
    the nginx config does."""
    caddy = require_tool("caddy", "caddy")
    shipped = DEPLOY / "Caddyfile"
    env = {**os.environ, "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    command = [caddy, "validate", "--config", str(shipped), "--adapter", "caddyfile"]
    validated = await run_tool(command, env)
    assert validated.returncode == 0, validated.stderr[-3000:]

    client = await make_client(config)
    http_port, https_port = free_port(), free_port()
    site = shipped.read_text()
    for old, new in {
        # a name, not an address: Caddy enforces SNI == Host when it checks client certificates
        "tvbridge.example.com {": f"https://localhost:{https_port} {{\n\tbind 127.0.0.1",
        "\ttls {": f"\ttls {pki.server_cert} {pki.server_key} {{",
        "\t\tclient_auth {": f"\t\tclient_auth {{\n\t\t\ttrusted_ca_cert_file {pki.ca}",
        "reverse_proxy 127.0.0.1:8080": f"reverse_proxy 127.0.0.1:{client.port}",
    }.items():
        assert old in site, old
        site = site.replace(old, new)
    header = f"{{\n\tadmin off\n\tauto_https off\n\thttp_port {http_port}\n\thttps_port {https_port}\n}}\n"
    caddyfile = tmp_path / "Caddyfile"
    caddyfile.write_text(header + site)
    command = [caddy, "run", "--config", str(caddyfile), "--adapter", "caddyfile"]
    async with running(command, https_port, tmp_path / "caddy.out", env):
        await check_proxy(f"https://localhost:{https_port}", pki)


def test_systemd_unit_verifies_and_is_hardened(tmp_path: Path) -> None:
    """`systemd-analyze verify` reports nothing for the unit (its ExecStart pointed at this Python), and
    `systemd-analyze security` rates its exposure 2.0 or lower ("OK" or better)."""
    analyze = require_tool("systemd-analyze", "systemd")
    unit = (DEPLOY / "tvbridge.service").read_text()
    unit = unit.replace("ExecStart=/opt/tvbridge/bin/tvbridge serve", f"ExecStart={sys.executable} -m tvbridge serve")
    path = tmp_path / "tvbridge.service"
    path.write_text(unit)
    verified = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, check=False, timeout=60)
    assert verified.returncode == 0, verified.stderr
    assert [line for line in verified.stderr.splitlines() if str(path) in line] == []
    rated = subprocess.run(
        [analyze, "security", "--offline=yes", str(path)], capture_output=True, text=True, check=False, timeout=60
    )
    found = re.search(r"Overall exposure level for tvbridge.service: ([0-9.]+)", rated.stdout)
    assert found is not None, rated.stdout + rated.stderr
    assert float(found.group(1)) <= 2.0


def test_prometheus_files_pass_promtool(tmp_path: Path) -> None:
    """deploy/prometheus: `promtool check rules` accepts the alert rules, and `promtool check config` the
    scrape job (with its token file pointed at a temporary one)."""
    promtool = require_tool("promtool", "prometheus")
    rules = DEPLOY / "prometheus" / "tvbridge-rules.yml"
    checked = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 8 rules found" in checked.stdout
    token = tmp_path / "token"
    token.write_text("x")
    config = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    assert "/etc/prometheus/tvbridge_admin_token" in config
    (tmp_path / "prometheus.yml").write_text(config.replace("/etc/prometheus/tvbridge_admin_token", str(token)))
    (tmp_path / "tvbridge-rules.yml").write_text(rules.read_text())
    command = [promtool, "check", "config", str(tmp_path / "prometheus.yml")]
    checked = subprocess.run(command, capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_dockerfile_copies_what_exists() -> None:
    """deploy/Dockerfile (not built in CI: no container engine) copies only paths the repository has, and runs
    the installed `tvbridge serve` as a non-root user."""
    text = (DEPLOY / "Dockerfile").read_text()
    repo = DEPLOY.parent
    sources = [
        part
        for line in text.splitlines()
        if line.startswith("COPY ") and "--from=" not in line
        for part in line.split()[1:-1]
    ]
    assert sources
    assert all((repo / source).exists() for source in sources), sources
    assert "USER tvbridge" in text
    assert 'CMD ["tvbridge", "serve"]' in text


def test_systemd_unit_leaves_descriptors_for_every_connection() -> None:
    """The shipped unit sets `LimitNOFILE` well above `limits.max_connections`: under the usual default soft limit
    (1024) tvbridge would have to lower its connection table at start (`connections.capped`)."""
    from tvbridge.config import LimitsConfig  # noqa: PLC0415 - the default under test
    from tvbridge.connections import DESCRIPTOR_RESERVE  # noqa: PLC0415

    unit = (DEPLOY / "tvbridge.service").read_text()
    [limit] = re.findall(r"^LimitNOFILE=(\d+)$", unit, flags=re.MULTILINE)
    assert int(limit) - max(DESCRIPTOR_RESERVE, int(limit) // 10) > 2 * LimitsConfig().max_connections


async def two_instances(make_client: ClientFactory, config: Config, tmp_path: Path) -> tuple[Any, Any]:
    """Two live tvbridge instances (each on its own data directory): `up`, and `down`, which is halted, so its
    `/health` and `/webhook` answer 503 having recorded nothing, as an instance cut off from its database does."""
    instances = []
    for name in ("down", "up"):
        data_dir = tmp_path / name
        data_dir.mkdir()
        instance = attrs.evolve(config, server=attrs.evolve(config.server, data_dir=data_dir))
        instances.append(await make_client(with_accounts(instance, {"s": {"broker": "scripted"}})))
    set_halt(halt_path(tmp_path / "down"), reason="standing for a lost database", by="test")
    assert (await instances[0].get("/health")).status == 503
    return instances[0], instances[1]


def placed_on(client: Any) -> int:
    path = client.app[CONFIG].data_path("scripted-s.jsonl")
    return len(path.read_text().splitlines()) if path.exists() else 0


async def post_through(base: str, pki: Pki, key: str) -> int:
    """POST an alert with its own `id` (each a new alert, not a repeat) through the proxy; its status."""
    connector = aiohttp.TCPConnector(ssl=client_ssl(pki, pki.tradingview), family=socket.AF_INET)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(base + "/webhook", json=alert(id=key)) as r,
    ):
        return r.status


async def test_nginx_two_instances_skip_the_one_that_answers_503(
    make_client: ClientFactory, config: Config, pki: Pki, tmp_path: Path
) -> None:
    """deploy/two-instances/nginx.conf passes `nginx -t`; running in front of two instances of which one answers
    503, every alert is answered 200 by the other (a 503 means nothing was recorded: passed on at once), and the
    503 instance places nothing."""
    nginx = require_tool("nginx", "nginx-light")
    down, up = await two_instances(make_client, config, tmp_path)
    http_port, https_port = free_port(), free_port()
    site = (DEPLOY / "two-instances" / "nginx.conf").read_text()
    for old, new in {
        "listen 80;": f"listen 127.0.0.1:{http_port};",
        "listen 443 ssl;": f"listen 127.0.0.1:{https_port} ssl;",
        "/etc/letsencrypt/live/tvbridge.example.com/fullchain.pem": str(pki.server_cert),
        "/etc/letsencrypt/live/tvbridge.example.com/privkey.pem": str(pki.server_key),
        "/etc/ssl/certs/ca-certificates.crt": str(pki.ca),
        "server 10.0.0.11:8080": f"server 127.0.0.1:{down.port}",
        "server 10.0.0.12:8080": f"server 127.0.0.1:{up.port}",
    }.items():
        assert old in site, old
        site = site.replace(old, new)
    (tmp_path / "site.conf").write_text(site)
    main = tmp_path / "nginx.conf"
    temp = "\n".join(
        f"    {kind}_temp_path {tmp_path / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    main.write_text(
        ("user root;\n" if os.geteuid() == 0 else "")
        + f"daemon off;\npid {tmp_path / 'nginx.pid'};\nerror_log {tmp_path / 'error.log'} info;\n"
        + "events { worker_connections 64; }\n"
        + f"http {{\n    access_log {tmp_path / 'access.log'};\n{temp}\n    include {tmp_path / 'site.conf'};\n}}\n"
    )
    args = [nginx, "-c", str(main), "-p", str(tmp_path), "-e", str(tmp_path / "error.log")]
    checked = await run_tool([*args, "-t"])
    assert checked.returncode == 0, checked.stderr
    async with running(args, https_port, tmp_path / "nginx.out"):
        statuses = [await post_through(f"https://127.0.0.1:{https_port}", pki, f"n{i}") for i in range(6)]
    assert statuses == [200] * 6
    assert (placed_on(up), placed_on(down)) == (6, 0)


async def test_caddy_two_instances_health_check_takes_the_503_one_out(
    make_client: ClientFactory, config: Config, pki: Pki, tmp_path: Path
) -> None:
    """deploy/two-instances/Caddyfile passes `caddy validate`; running in front of two instances of which one
    answers 503 on /health, Caddy stops sending to it: once an alert got through, every later one is answered
    200 by the healthy instance, and the 503 instance places nothing."""
    caddy = require_tool("caddy", "caddy")
    shipped = DEPLOY / "two-instances" / "Caddyfile"
    env = {**os.environ, "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    validated = await run_tool([caddy, "validate", "--config", str(shipped), "--adapter", "caddyfile"], env)
    assert validated.returncode == 0, validated.stderr[-3000:]
    down, up = await two_instances(make_client, config, tmp_path)
    http_port, https_port = free_port(), free_port()
    site = shipped.read_text()
    for old, new in {
        "tvbridge.example.com {": f"https://localhost:{https_port} {{\n\tbind 127.0.0.1",
        "\ttls {": f"\ttls {pki.server_cert} {pki.server_key} {{",
        "\t\tclient_auth {": f"\t\tclient_auth {{\n\t\t\ttrusted_ca_cert_file {pki.ca}",
        "reverse_proxy 10.0.0.11:8080 10.0.0.12:8080": f"reverse_proxy 127.0.0.1:{down.port} 127.0.0.1:{up.port}",
    }.items():
        assert old in site, old
        site = site.replace(old, new)
    header = f"{{\n\tadmin off\n\tauto_https off\n\thttp_port {http_port}\n\thttps_port {https_port}\n}}\n"
    caddyfile = tmp_path / "Caddyfile"
    caddyfile.write_text(header + site)
    base = f"https://localhost:{https_port}"
    async with running(
        [caddy, "run", "--config", str(caddyfile), "--adapter", "caddyfile"], https_port, tmp_path / "caddy.out", env
    ):
        async with asyncio.timeout(WAIT_S):
            tries = 0
            while await post_through(base, pki, f"first-{tries}") != 200:  # before a check has seen the 503
                tries += 1
        statuses = [await post_through(base, pki, f"c{i}") for i in range(6)]
    assert statuses == [200] * 6
    assert (placed_on(up), placed_on(down)) == (7, 0)
