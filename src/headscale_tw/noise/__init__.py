"""headscale_tw.noise."""
