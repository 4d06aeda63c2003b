"""headscale-tw: a self-hosted Tailscale control server on Twisted."""

__version__ = "0.1.0.dev0"
