"""headscale_tw.web."""
