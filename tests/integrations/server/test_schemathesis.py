"""Property-based run of every operation in the app's own OpenAPI schema with schemathesis: schema-
conforming (positive) and schema-violating (negative) requests, a bounded number per operation and
mode. The server must never answer 5xx.

The operations are driven through schemathesis' Python API (``operation.as_strategy`` + hypothesis)
rather than ``schemathesis.pytest.from_fixture``, whose lazy loader does not run on pytest 9.
"""
from __future__ import annotations

import time
from collections import Counter, defaultdict

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from unirep_integrations.server import Limits, create_app  # noqa: E402

MAX_EXAMPLES = 20  # per operation and mode


@pytest.fixture(scope="module")
def api_schema(tiny_model):
    app = create_app(tiny_model, max_wait_ms=0, limits=Limits(max_items=8, max_text_chars=300))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["positive", "negative"])
def test_no_server_errors(api_schema, mode, capsys):
    statuses: dict[str, Counter] = defaultdict(Counter)
    failures: list[str] = []
    start = time.perf_counter()
    operations = [result.ok() for result in api_schema.get_all_operations()]  # Err results raise here
    assert len(operations) >= 14
    for operation in operations:
        label = operation.label

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case):
            response = case.call()
            statuses[label][response.status_code] += 1
            case.validate_response(response, checks=[not_a_server_error])

        try:
            run()
        except Unsatisfiable:
            # no parameters or body to break (GET /health), or only strings (a path id): no negative case exists
            assert mode == GenerationMode.NEGATIVE, label
            statuses.setdefault(label, Counter())
        except Exception as e:  # keep going: report every failing operation at once
            failures.append(f"{label}: {type(e).__name__}: {str(e)[:500]}")
    total = sum(sum(c.values()) for c in statuses.values())
    lines = [f"schemathesis {mode.value}: {total} calls, {len(operations)} operations, "
             f"{time.perf_counter() - start:.1f} s"]
    lines += [f"  {op}: {dict(sorted(c.items()))}" for op, c in sorted(statuses.items())]
    with capsys.disabled():  # the counts show in every run's output
        print("\n" + "\n".join(lines))
    assert not failures, "\n".join(failures)
    assert all(status < 500 for c in statuses.values() for status in c)
