"""Schema-driven fuzzing of the real app with schemathesis: cases generated from /openapi.json
(whose request bodies serve_app/openapi_bodies.py describes), positive (schema-valid) and negative
(schema-breaking), half of the positive ones aimed at models that exist so they reach the
engines. Every response must be documented (status, content type, body schema) and none may be
a 5xx. The admin routes are fuzzed without the token (this app is shared with other tests:
fuzzed registrations or deletions must not change it), so they exercise the 401 path.

Uses schemathesis's Python API with Hypothesis directly (its pytest plugin does not work with
the pytest here); failures are collected, not shrunk, so the test stays bounded.
"""

from collections import Counter, defaultdict

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
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
EXAMPLES = {GenerationMode.POSITIVE: 20, GenerationMode.NEGATIVE: 10}  # per operation


def test_fuzz_every_operation(app_url):
    schema = schemathesis.openapi.from_url(f"{app_url}/openapi.json")
    seen: dict[str, Counter] = defaultdict(Counter)
    failures: list[str] = []
    for result in schema.get_all_operations():
        op = result.ok()
        for mode, n in EXAMPLES.items():
            try:
                _fuzz(op, mode, n, app_url, seen, failures)()
            except Unsatisfiable:  # nothing to break: GET /v1/models has no inputs
                assert mode is GenerationMode.NEGATIVE
    print("\nschemathesis cases per operation (status: count):")
    for name, statuses in sorted(seen.items()):
        print(f"  {name:36} {sum(statuses.values()):3}  {dict(sorted(statuses.items()))}")
    # Every operation was called; the ones with inputs many times (GETs have none to vary).
    assert len(seen) >= 9 and sum(sum(s.values()) >= 20 for s in seen.values()) >= 7, seen
    assert not failures, "\n".join(failures[:10])


def _fuzz(op, mode, n: int, app_url: str, seen: dict, failures: list):
    """A Hypothesis test sending ``n`` cases of ``mode`` for ``op``; results go to seen/failures."""
    name = f"{op.method.upper()} {op.path}"

    @given(case=op.as_strategy(generation_mode=mode))
    @settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def run(case):
        body = case.body
        count = sum(seen[name].values())
        if isinstance(body, dict) and mode is GenerationMode.POSITIVE:
            if "model" in body and count % 2 == 0:  # every other case: a served model
                body["model"] = MODELS[count // 2 % len(MODELS)]
            for cap in ("max_tokens", "max_completion_tokens"):  # short generations
                if isinstance(body.get(cap), int) and body[cap] > 8:
                    body[cap] = 8
        response = case.call(base_url=app_url, timeout=120)
        seen[name][response.status_code] += 1
        try:
            case.validate_response(response, checks=CHECKS)
        except BaseExceptionGroup as e:  # collected, not shrunk: the test stays bounded
            failures.append(f"{name} {mode.value} {response.status_code}: {e.exceptions[0]!r:.300}")

    return run
