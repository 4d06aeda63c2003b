"""The OpenID Provider side of the real-client OIDC tests, started the one way they all need."""

from __future__ import annotations

import os
from typing import Any

from headscale_tw.testing.oidc_provider import ClientRegistration, OIDCProvider

__all__ = ["start_oidc_provider"]


def start_oidc_provider(namespace: Any, log_dir: str, ca: Any, client_secret: str, server_url: str,
                        **provider_options: Any) -> tuple[OIDCProvider, str]:
    """
    Start the real oidc-provider in ``namespace`` with client ``headscale`` registered for
    ``<server_url>/oidc/callback``, and write the CA bundle the server trusts.

    :param ca: the test CA of the server's own TLS certificate (``make_ca()``).
    :param provider_options: passed to :class:`OIDCProvider` (e.g. ``id_token_ttl``).
    :returns: the started provider and the path of a PEM bundle holding ``ca``'s and the
        provider's CA certificates (the server's ``SSL_CERT_FILE``).
    """
    provider = OIDCProvider(os.path.join(log_dir, "idp"),
                            [ClientRegistration("headscale", client_secret, (server_url + "/oidc/callback",))],
                            namespace=namespace, **provider_options).start()
    bundle = os.path.join(log_dir, "trusted-cas.pem")
    with open(bundle, "w") as out:
        for path in (ca.ca_pem, provider.ca_pem):
            with open(path) as f:
                out.write(f.read())
    return provider, bundle
