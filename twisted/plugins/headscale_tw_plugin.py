"""twistd plugin: `twistd headscale`. Points at headscale_tw.tap and nothing else."""

from twisted.application.service import ServiceMaker

headscale = ServiceMaker(
    "Headscale (Twisted)",
    "headscale_tw.tap",
    "A self-hosted Tailscale control server (headscale-tw).",
    "headscale",
)
