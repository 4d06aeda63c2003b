"""Tests for the node, route, policy and auth admin API and CLI over a real control plane."""
