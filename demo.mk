# `make demo`, included from the Makefile: a real registry and AWS emulator on loopback, releases recorded by
# the CLI as CI would, one tag swapped with a "stolen" push credential, the scheduled Lambda's alert as an SQS
# subscriber and an e-mail reader get it, no duplicate on the next run; then the registry's push notifications,
# through the webhook receiver and the push-event queue, get a second swap alerted seconds after its push; the
# evidence table. Under a minute.
# Needs the same setup as `make test` (uv, and the Debian package docker-registry).
.PHONY: demo

demo: setup
	$(UV) run --locked python -m demo.run
