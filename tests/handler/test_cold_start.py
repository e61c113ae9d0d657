"""Cold start: the X-Ray SDK only when tracing is on; the registry adapter only when the first invocation builds it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import handler

SRC = Path(__file__).resolve().parents[2] / "src"
# The decorator layers of lambda_handler, by the file their code is in (functools.wraps copies names).
PROBE = """
import json, sys, handler
layers, fn = [], handler.lambda_handler
while fn is not None:
    layers.append(fn.__code__.co_filename.rsplit("/", 2)[-2])
    fn = getattr(fn, "__wrapped__", None)
loaded = {m: any(n == m or n.startswith(m + ".") for n in sys.modules) for m in ("aws_xray_sdk", "httpx")}
print(json.dumps(loaded | {"traced": "tracing" in layers}))
"""


def imported_by_handler(**environ: str) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_LAMBDA", "POWERTOOLS", "AWS_SAM"))}
    env |= {"PYTHONPATH": str(SRC), "AWS_DEFAULT_REGION": "eu-west-1"} | environ
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_outside_lambda_import_handler_loads_neither_xray_nor_the_registry_adapter() -> None:
    # the registry adapter (httpx) is built, and imported, by the first invocation
    assert imported_by_handler() == {"aws_xray_sdk": False, "httpx": False, "traced": False}


def test_with_tracing_disabled_in_lambda_xray_is_not_loaded() -> None:
    seen = imported_by_handler(AWS_LAMBDA_FUNCTION_NAME="audit", POWERTOOLS_TRACE_DISABLED="true")
    assert seen == {"aws_xray_sdk": False, "httpx": False, "traced": False}


def test_in_lambda_with_tracing_on_the_handler_is_traced() -> None:
    seen = imported_by_handler(AWS_LAMBDA_FUNCTION_NAME="audit")
    assert seen == {"aws_xray_sdk": True, "httpx": False, "traced": True}


@pytest.mark.parametrize(
    ("environ", "enabled"),
    [
        ({}, False),
        ({"AWS_LAMBDA_FUNCTION_NAME": "f"}, True),
        ({"AWS_LAMBDA_FUNCTION_NAME": "f", "AWS_SAM_LOCAL": "true"}, False),
        ({"AWS_LAMBDA_FUNCTION_NAME": "f", "POWERTOOLS_TRACE_DISABLED": "TRUE"}, False),
        ({"AWS_LAMBDA_FUNCTION_NAME": "f", "POWERTOOLS_TRACE_DISABLED": "false"}, True),
    ],
)
def test_tracing_enabled(environ: dict[str, str], enabled: bool) -> None:
    assert handler.tracing_enabled(environ) is enabled
