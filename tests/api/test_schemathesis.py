"""Schemathesis against the API's own OpenAPI schema, with an admin token and a member token.

Every operation gets generated requests, fitting the schema and not; every answer must
be a documented status with a body that fits the schema, an invalid request must be
refused with a 4xx, and nothing may answer 5xx. It runs against a real gateway (its
floor, journal and people store), so a command the admin sends really changes a machine.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests.api.conftest import Lab

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
#: Examples per operation, token and mode: enough to reach every status, quick on two cores.
EXAMPLES = 8


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("token", ["admin", "ada"])
def test_every_operation_keeps_to_its_schema(shared_lab: Lab, token: str, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_asgi("/api/openapi.json", shared_lab.app)
    # An unknown query parameter is ignored, as HTTP APIs do; the token is sent by the test.
    schema.config.generation.update(allow_extra_parameters=False, with_security_parameters=False)
    headers = shared_lab.headers(token)
    operations = [result.ok() for result in schema.get_all_operations() if isinstance(result, Ok)]
    assert len(operations) > 10
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case: Any) -> None:
            case.call_and_validate(headers=headers, checks=CHECKS)

        try:
            run()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE, operation.label  # nothing to get wrong: no input at all
