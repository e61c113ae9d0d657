"""Fixtures that start moto in server mode on loopback."""
