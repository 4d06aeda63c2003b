"""headscale_tw.policy."""
