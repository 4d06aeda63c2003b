"""Protocol-level load generator and control-plane benchmarks (``python -m headscale_tw.bench``)."""
