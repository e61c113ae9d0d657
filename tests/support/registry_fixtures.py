"""Fixtures that start a real docker-registry (and a token server) on loopback."""
