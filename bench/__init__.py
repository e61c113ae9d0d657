"""The digest-audit benchmark (`make bench`): throughput, request counts, memory and start-up, measured."""
