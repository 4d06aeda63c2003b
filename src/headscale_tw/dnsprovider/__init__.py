"""
DNS providers: where the challenge records of ``tailscale cert`` (ACME DNS-01) are published.

:class:`~headscale_tw.dnsprovider.interface.IDNSProvider` is the seam;
:mod:`~headscale_tw.dnsprovider.rfc2136` is the one provider shipped (dynamic
DNS updates, TSIG-signed); :func:`~headscale_tw.dnsprovider.build.build_provider`
makes the configured one.
"""
