"""Probe suites (loading, importing public formats), targets and the probe runner."""
