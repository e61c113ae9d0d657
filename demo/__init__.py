"""`make demo`: a real registry and AWS emulator on loopback, releases recorded, one swapped, the alert shown."""
