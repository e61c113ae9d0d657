# Deployment checks, included from the Makefile: `make sam-validate` and `make sam-build` need no AWS account.
# SAM CLI runs through uvx (fetched from PyPI on first use, then cached), pinned together with its cfn-lint so a
# new lint rule cannot turn CI red on its own; bump both deliberately.
SAM_CLI_VERSION ?= 1.170.0
CFN_LINT_VERSION ?= 1.58.0
# checkov, the IaC scanner, runs offline (--skip-download: no platform, no API key); pinned like SAM CLI.
CHECKOV_VERSION ?= 3.3.30
UVX ?= uvx
SAM_CLI ?= $(UVX) --from aws-sam-cli==$(SAM_CLI_VERSION) --with cfn-lint==$(CFN_LINT_VERSION) sam
# Validation only needs a region name, never credentials; set per command so the tests' environment is untouched.
SAM_REGION ?= eu-west-1
SAM_ENV := SAM_CLI_TELEMETRY=0 UV_PYTHON_DOWNLOADS=never AWS_DEFAULT_REGION=$(SAM_REGION)

SAM_PROJECT_DIR := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
SAM_BUILT_FUNCTION := $(SAM_PROJECT_DIR)/.aws-sam/build/AuditFunction

.PHONY: sam-validate sam-build checkov

# Every failed check is either fixed or skipped in the resource's Metadata with the reason, so a new resource
# cannot slip in unreviewed. checkov drops resources whose Condition is false with the default parameters, so it
# scans a second copy with every "false" switch (the push-event sources) turned on.
CHECKOV := $(UVX) --from checkov==$(CHECKOV_VERSION) checkov --framework cloudformation --skip-download --compact --quiet
CHECKOV_ALL_ON := .aws-sam/checkov/template-all-sources.yaml

checkov:
	cd "$(SAM_PROJECT_DIR)" && $(CHECKOV) --file template.yaml
	cd "$(SAM_PROJECT_DIR)" && mkdir -p "$(dir $(CHECKOV_ALL_ON))" \
		&& sed 's/^\(    Default: \)"false"$$/\1"true"/' template.yaml > "$(CHECKOV_ALL_ON)" \
		&& ! cmp -s template.yaml "$(CHECKOV_ALL_ON)" \
		&& $(CHECKOV) --file "$(CHECKOV_ALL_ON)"

# Two different checks: cfn-lint (`lint = true` in samconfig.toml) validates the template against the resource
# schemas and best practices, but no longer runs the SAM transform; the `translate` config environment
# (lint = false) runs the SAM translator, which catches what only the transform knows (event sources, policies).
sam-validate:
	cd "$(SAM_PROJECT_DIR)" && $(SAM_ENV) $(SAM_CLI) validate --lint
	cd "$(SAM_PROJECT_DIR)" && $(SAM_ENV) $(SAM_CLI) validate --config-env translate

# Builds exactly what `sam deploy` would upload (src/Makefile cross-installs arm64 wheels), then checks the
# package holds the code and native wheels for the Lambda's platform.
sam-build:
	cd "$(SAM_PROJECT_DIR)" && $(SAM_ENV) $(SAM_CLI) build
	test -f "$(SAM_BUILT_FUNCTION)/handler.py"
	test -f "$(SAM_BUILT_FUNCTION)/audit/__init__.py"
	test -f "$(SAM_PROJECT_DIR)/.aws-sam/build/ReceiverFunction/receiver.py"
	test -f "$(SAM_BUILT_FUNCTION)/pydantic_core/_pydantic_core.cpython-313-aarch64-linux-gnu.so"
	test -f "$(SAM_BUILT_FUNCTION)/audit/__pycache__/bootstrap.cpython-313.pyc"
	test -f "$(SAM_BUILT_FUNCTION)/pydantic/__pycache__/main.cpython-313.pyc"
	@! find "$(SAM_BUILT_FUNCTION)" -name '*x86_64*.so' | grep . \
		|| { echo "x86_64 extension modules in the arm64 package" >&2; exit 1; }
	@for pkg in boto3 botocore; do \
		if test -e "$(SAM_BUILT_FUNCTION)/$$pkg"; then echo "$$pkg must come from the Lambda runtime" >&2; exit 1; fi; \
	done
	@du -sh "$(SAM_BUILT_FUNCTION)"
