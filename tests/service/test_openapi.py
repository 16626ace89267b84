"""The OpenAPI document: what it promises, and a live server held to it by schemathesis.

The first tests read the document; the last ones run schemathesis against a real
``fraudscore serve`` process: generated requests (valid, invalid, and valid ones that the
model can score) on every operation, each response checked against the documented
statuses, bodies, content types and headers.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import Case
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.schemas import OpenApiSchema

from service.main import create_app
from service.schemas import ErrorBody, ScoreResponse, Transaction
from service.settings import Settings
from tests.conftest import FAKE_AWS
from tests.e2e.live_server import (
    POLL_INTERVAL_S,
    LiveServer,
    http_client,
    is_json_object,
    running_server,
)

ERROR_BODY_REF = "#/components/schemas/ErrorBody"
MAX_BATCH = 37
ADMIN_TOKEN = "openapi-test-admin-token"  # noqa: S105  (a test's own throwaway token)
# The error statuses each operation must document (it may document more).
REQUIRED_ERRORS = {
    ("post", "/score"): {"401", "413", "422", "502", "503", "504"},
    ("post", "/score/batch"): {"401", "413", "422", "502", "503", "504"},
    ("get", "/readyz"): {"503"},
    ("get", "/model"): {"503"},
    ("get", "/admin/models"): {"401", "403"},
}


def served_document(max_batch: int) -> dict[str, Any]:
    """The document the app serves at /openapi.json (no model is needed to serve it)."""
    # The app opens no file before its lifespan runs, and the lifespan does not run here.
    app = create_app(Settings(registry="unused-registry", access_log=False, max_batch=max_batch))
    response = TestClient(app).get("/openapi.json")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return served_document(MAX_BATCH)


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield method, path, operation


def resolve(document: dict[str, Any], ref: str) -> dict[str, Any]:
    assert ref.startswith("#/components/schemas/"), ref
    schemas: dict[str, Any] = document["components"]["schemas"]
    name = ref.removeprefix("#/components/schemas/")
    assert name in schemas, f"{ref} is not in components"
    found: dict[str, Any] = schemas[name]
    return found


def test_every_error_response_is_the_error_body(document: dict[str, Any]) -> None:
    wrong = {}
    for method, path, operation in operations(document):
        for status, response in operation["responses"].items():
            if status.startswith(("4", "5")) or status == "default":
                schema = response.get("content", {}).get("application/json", {}).get("schema")
                if schema != {"$ref": ERROR_BODY_REF}:
                    wrong[f"{method.upper()} {path} {status}"] = schema
    assert not wrong, f"error responses not documented with ErrorBody: {wrong}"
    assert resolve(document, ERROR_BODY_REF)["required"] == ["error", "message", "request_id"]


def test_each_operation_documents_the_errors_it_can_give(document: dict[str, Any]) -> None:
    documented = {
        (method, path): set(operation["responses"])
        for method, path, operation in operations(document)
    }
    assert set(REQUIRED_ERRORS) <= set(documented)
    missing = {
        f"{method.upper()} {path}": sorted(statuses - documented[(method, path)])
        for (method, path), statuses in REQUIRED_ERRORS.items()
        if statuses - documented[(method, path)]
    }
    assert not missing, f"undocumented error statuses: {missing}"
    # 503 says when to retry.
    for method, path, operation in operations(document):
        if "503" in operation["responses"]:
            headers = operation["responses"]["503"].get("headers", {})
            assert "Retry-After" in headers, f"{method.upper()} {path} 503"


def test_every_json_response_documents_the_request_id_header(document: dict[str, Any]) -> None:
    missing = [
        f"{method.upper()} {path} {status}"
        for method, path, operation in operations(document)
        for status, response in operation["responses"].items()
        if "application/json" in response.get("content", {})
        and "X-Request-ID" not in response.get("headers", {})
    ]
    assert not missing, missing


@pytest.mark.parametrize(
    ("path", "component"), [("/score", "Transaction"), ("/score/batch", "TransactionBatch")]
)
def test_scoring_request_bodies_reference_their_components(
    document: dict[str, Any], path: str, component: str
) -> None:
    body = document["paths"][path]["post"]["requestBody"]
    assert body["required"] is True
    schema = body["content"]["application/json"]["schema"]
    assert schema == {"$ref": f"#/components/schemas/{component}"}
    resolved = resolve(document, schema["$ref"])
    assert resolved["type"] == "object"
    assert resolved["additionalProperties"] is False


def test_the_transaction_component_is_the_request_model(document: dict[str, Any]) -> None:
    transaction = resolve(document, "#/components/schemas/Transaction")
    assert transaction["required"] == ["transaction_id", "amount", "tran_code"]
    assert set(transaction["properties"]) == set(Transaction.model_fields)
    # Nothing in the document points at a schema that is not there.
    refs: list[str] = []

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(document)
    for ref in refs:
        resolve(document, ref)


@pytest.mark.parametrize("component", ["Transaction", "TransactionBatch", "ScoreResponse"])
def test_request_and_response_components_carry_examples(
    document: dict[str, Any], component: str
) -> None:
    examples = resolve(document, f"#/components/schemas/{component}").get("examples")
    assert isinstance(examples, list)
    assert examples


def test_the_examples_are_valid(document: dict[str, Any]) -> None:
    # Requests arrive as JSON, where timestamps are ISO text (strict, not datetime objects).
    for example in resolve(document, "#/components/schemas/Transaction")["examples"]:
        Transaction.model_validate_json(json.dumps(example))
    for example in resolve(document, "#/components/schemas/ScoreResponse")["examples"]:
        ScoreResponse.model_validate_json(json.dumps(example))
    for example in resolve(document, ERROR_BODY_REF)["examples"]:
        ErrorBody.model_validate_json(json.dumps(example))


def test_the_batch_limit_is_the_configured_one(document: dict[str, Any]) -> None:
    batch = resolve(document, "#/components/schemas/TransactionBatch")
    transactions = batch["properties"]["transactions"]
    assert transactions["maxItems"] == MAX_BATCH
    assert transactions["minItems"] == 1
    assert transactions["items"] == {"$ref": "#/components/schemas/Transaction"}
    assert str(MAX_BATCH) in batch["description"]


# -- schemathesis against a live server -----------------------------------------------------------
#
# One test per operation and kind of request, each a bounded, reproducible Hypothesis run:
# "positive" and "negative" are schemathesis's valid and invalid requests; "scorable" are
# its valid transactions completed with every field the model needs (its own positive ones
# lack them, so they are all answered 422), which reach the scoring code and its 200 answer.
# (schemathesis.pytest.from_fixture would load the schema from a fixture too, but its
# parametrize() reads ``request.node._nodeid``, which pytest 9 removed.)

LIVE_MAX_BATCH = 20
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
SCORING = {("POST", "/score"), ("POST", "/score/batch")}
_SERVED = served_document(MAX_BATCH)
OPERATIONS = sorted((method.upper(), path) for method, path, _ in operations(_SERVED))


def _runs() -> list[Any]:
    runs = []
    for method, path, operation in sorted(operations(_SERVED), key=lambda o: (o[1], o[0])):
        kinds = ["positive"]
        if "parameters" in operation or "requestBody" in operation:
            kinds.append("negative")  # invalid requests exist only when there is input
        if (method.upper(), path) in SCORING:
            kinds.append("scorable")
        runs += [
            pytest.param(method.upper(), path, kind, id=f"{method.upper()} {path} {kind}")
            for kind in kinds
        ]
    return runs


@dataclass(frozen=True)
class LiveApi:
    server: LiveServer
    schema: OpenApiSchema
    model_fields: list[dict[str, Any]]


@pytest.fixture(scope="module")
def live_api(trained_registry: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApi]:
    """A real ``fraudscore serve`` process and its document, loaded by schemathesis."""
    root = tmp_path_factory.mktemp("live-openapi")
    shutil.copytree(trained_registry, root / "registry")
    env = {
        "FRAUDSCORE_POLL_INTERVAL_S": str(POLL_INTERVAL_S),
        "FRAUDSCORE_MAX_BATCH": str(LIVE_MAX_BATCH),
        "FRAUDSCORE_ADMIN_TOKEN": ADMIN_TOKEN,
        # Generated retrains may name s3:// data: fake credentials and an endpoint that
        # refuses at once, so nothing can reach a real account.
        **FAKE_AWS,
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
    }
    with running_server(root / "registry", root / "logs", env=env) as server:
        schema = schemathesis.openapi.from_url(f"{server.base_url}/openapi.json", timeout=10)
        with http_client(server.base_url) as client:
            model = client.get("/model")
        assert model.status_code == 200, model.text
        yield LiveApi(server, schema, model.json()["fields"])


def model_features(fields: list[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Values for every model field carried in ``features``: any finite number, or a known
    or unseen category."""
    values: dict[str, st.SearchStrategy[Any]] = {}
    for field in fields:
        name = field["location"].removeprefix("features.")
        if name == field["location"]:
            continue  # amount and tran_code: schemathesis generates those
        if field["kind"] == "numeric":
            values[name] = st.floats(allow_nan=False, allow_infinity=False)
        else:
            values[name] = st.sampled_from(field["categories"]) | st.text(max_size=16)
    return st.fixed_dictionaries(values)


def scorable_cases(operation: Any, fields: list[dict[str, Any]]) -> st.SearchStrategy[Case[Any]]:
    """Schemathesis's valid requests with the model's fields added to each transaction."""
    features = model_features(fields)

    @st.composite
    def build(draw: st.DrawFn) -> Case[Any]:
        case: Case[Any] = draw(operation.as_strategy(GenerationMode.POSITIVE))
        body = case.body
        assert isinstance(body, dict), body
        transactions: list[dict[str, Any]] = body.get("transactions", [body])  # type: ignore[assignment]
        for transaction in transactions:
            transaction["features"] = {**transaction.get("features", {}), **draw(features)}
        return case

    return build()


def test_the_live_document_is_the_one_tested(live_api: LiveApi) -> None:
    live = live_api.schema.raw_schema
    assert sorted((m.upper(), p) for m, p, _ in operations(live)) == OPERATIONS
    batch = live["components"]["schemas"]["TransactionBatch"]
    assert batch["properties"]["transactions"]["maxItems"] == LIVE_MAX_BATCH


@pytest.mark.slow
@pytest.mark.parametrize(("method", "path", "kind"), _runs())
def test_the_live_service_keeps_its_documented_contract(
    live_api: LiveApi, method: str, path: str, kind: str
) -> None:
    operation = live_api.schema[path][method]
    if kind == "scorable":
        cases = scorable_cases(operation, live_api.model_fields)
    else:
        cases = operation.as_strategy(generation_mode=GenerationMode(kind))
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}  # admin routes on; ignored elsewhere
    log_lines_before = len(live_api.server.stderr_lines())

    @settings(
        max_examples=30,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(case=cases)
    def conforms(case: Case[Any]) -> None:
        case.call_and_validate(headers=headers, checks=CHECKS)

    try:
        conforms()
    finally:
        assert live_api.server.process.poll() is None, live_api.server.stderr()[-4000:]
    # Whatever was sent, the service logged JSON lines only, and no unhandled error.
    lines = live_api.server.stderr_lines()[log_lines_before:]
    not_json = [line for line in lines if not is_json_object(line)]
    assert not not_json, f"non-JSON lines on stderr: {not_json[:10]}"
    errors = [line for line in lines if '"exception"' in line]
    assert not errors, errors[:3]
