"""The broker plugins that ship with tvbridge (`paper`, `dhan`).

Installed as `tvbridge_brokers`, not a bare `brokers`, so they never clash with a user's own `brokers` package
(the guide's server has one). They are found like any third-party plugin: through the `tvbridge.brokers` entry
point group, never imported by the core.
"""
