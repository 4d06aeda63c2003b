"""headscale_tw.cli."""
