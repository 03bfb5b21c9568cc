"""Schema-driven fuzzing of the real app with schemathesis: cases generated from /openapi.json
(whose request bodies serve_app/openapi_bodies.py describes), half of them aimed at models that
exist, so they reach the engines. Every response must be documented (status, content type, body
schema) and none may be a 5xx. The admin routes are fuzzed without the token (this app is shared
with other tests: fuzzed registrations or deletions must not change it), so they check the 401s.
"""

from collections import Counter, defaultdict

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.e2e.conftest import BASE

MODELS = [BASE, f"{BASE}:sql", "poet", "tiny-sd", "tiny-sd:style3d"]
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
SEEN: dict[str, Counter] = defaultdict(Counter)


@pytest.fixture(scope="module")
def fuzz_schema(app_url):
    schema = schemathesis.openapi.from_url(f"{app_url}/openapi.json")
    yield schema
    print("\nschemathesis cases per endpoint (status: count):")
    for op, statuses in sorted(SEEN.items()):
        print(f"  {op:36} {sum(statuses.values()):3}  {dict(sorted(statuses.items()))}")


schema = schemathesis.pytest.from_fixture("fuzz_schema")


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzz(case, app_url):
    body = case.body
    if isinstance(body, dict):
        n = sum(SEEN[f"{case.method} {case.path}"].values())
        if "model" in body and n % 2 == 0:  # every other case names a served model
            body["model"] = MODELS[n // 2 % len(MODELS)]
        for cap in ("max_tokens", "max_completion_tokens"):  # keep generation short
            if isinstance(body.get(cap), int) and body[cap] > 8:
                body[cap] = 8
    response = case.call(base_url=app_url, timeout=120)
    SEEN[f"{case.method} {case.path}"][response.status_code] += 1
    case.validate_response(response, checks=CHECKS)
