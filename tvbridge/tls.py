"""Serving HTTPS directly, and recognising TradingView's client certificate.

TradingView delivers only to ports 80 and 443, and over HTTPS it presents a client certificate whose subject
CN is `TradingView Webhooks`. With `server.tls_cert` set, tvbridge terminates TLS itself; with
`auth.require_client_cert` it also asks every caller for a certificate, verified against
`auth.client_ca_file` (or the system's trusted CAs). The certificate is requested, not required, in the
handshake (`CERT_OPTIONAL`), so `/health` still works for a monitor without one; a certificate that is sent
must verify, and the webhook routes refuse a caller without the right CN (`middlewares/client_cert.py`).
Behind nginx or Caddy the proxy does this instead (docs/guards.md).
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Final

from tvbridge.errors import ConfigError

if TYPE_CHECKING:
    from tvbridge.config import Config

TRADINGVIEW_CN: Final = "TradingView Webhooks"


def server_context(config: Config) -> ssl.SSLContext | None:
    """The TLS context for the listening socket; None without `server.tls_cert`. `ConfigError` if unusable."""
    server, auth = config.server, config.auth
    if not server.tls_cert:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    cert = config.data_path(server.tls_cert)
    key = config.data_path(server.tls_key) if server.tls_key else None
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"server.tls_cert / server.tls_key: cannot load {cert}: {e}") from None
    if auth.require_client_cert:
        context.verify_mode = ssl.CERT_OPTIONAL
        try:
            if auth.client_ca_file:
                context.load_verify_locations(cafile=config.data_path(auth.client_ca_file))
            else:
                context.load_default_certs(ssl.Purpose.CLIENT_AUTH)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"auth.client_ca_file: cannot load {auth.client_ca_file}: {e}") from None
    return context


def common_names(peercert: object) -> list[str]:
    """The subject CNs of a verified peer certificate as `SSLSocket.getpeercert()` gives it ([] if none)."""
    if not isinstance(peercert, dict):
        return []
    return [str(value) for rdn in peercert.get("subject", ()) for name, value in rdn if name == "commonName"]
