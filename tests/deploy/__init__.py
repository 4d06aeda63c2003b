"""Tests of the deployment files under deploy/ (systemd unit, nginx sites, containers, Prometheus)."""
