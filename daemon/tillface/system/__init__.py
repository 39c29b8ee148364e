"""Integration with the host: systemd readiness, watchdog and status."""
