"""The OpenAPI document: FastAPI's routes plus the two score endpoints, which are plain ASGI
(:mod:`scoring.serving.fastpath`) and so are described here by hand, with msgspec's schemas of the
score bodies (:mod:`scoring.serving.schemas`)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

JSON = "application/json"


def error_doc(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {JSON: {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}


SCORE_EXAMPLE = {
    "request_id": "r-1",
    "context": {"user_id": "u42", "city": "bj", "hour": "14"},
    "ads": [{"id": "a1", "features": {"ad_id": "a1", "category": ["hotpot", "bbq"]}},
            {"id": "a2", "features": {"ad_id": 1234567890123}}],
}
SCORE_RESPONSES = {
    "200": {"description": "One pCTR per ad, in request order",
            "content": {JSON: {"schema": {"$ref": "#/components/schemas/ScoreResponse"},
                               "example": {"model": "ctr", "version": "20261122.1",
                                           "scores": [0.0132, 0.0071], "request_id": "r-1"}}}},
    "400": error_doc("Not JSON"),
    "404": error_doc("Unknown model"),
    "413": error_doc("Too many ads (CTR_MAX_ADS), values in a group (CTR_MAX_VALUES_PER_GROUP) "
                      "or body bytes (CTR_MAX_BODY_BYTES)"),
    "415": error_doc("Not a JSON content type"),
    "422": error_doc("Valid JSON that does not fit the schema or the model (unknown group, "
                      "dense length, non-finite number, id out of range)"),
    "503": error_doc("The model is not loaded yet"),
}


EXPLAIN_EXAMPLE = {"model": "ctr", "version": "20261122.1", "request_id": "r-1", "ads": [
    {"pctr": 0.0132, "logit": -4.314, "remainder": -3.9, "bias": -3.9,
     "groups": {"user_id": {"influence": 0.0021, "contribution": -0.52},
                "ad_id": {"influence": 0.0009, "contribution": 0.106}}}]}
EXPLAIN_DOC = {
    "requestBody": {"required": True, "content": {JSON: {
        "schema": {"$ref": "#/components/schemas/ScoreRequest"}, "example": SCORE_EXAMPLE}}},
    "responses": {"200": {"description": "Per ad: pCTR, logit, the remainder (biases through the "
                                         "ReLU masks, plus dense features) and per group its "
                                         "influence and contribution",
                          "content": {JSON: {"example": EXPLAIN_EXAMPLE}}}},
}


def score_operation(named: bool) -> dict[str, Any]:
    """OpenAPI for a score endpoint (answered by :class:`ScoreFastPath`, not a FastAPI route)."""
    op: dict[str, Any] = {
        "summary": "Score ads with a named model" if named else
                   "Score ads with the default model (or the experiment split)",
        "operationId": "score_named" if named else "score_default",
        "requestBody": {"required": True, "content": {JSON: {
            "schema": {"$ref": "#/components/schemas/ScoreRequest"}, "example": SCORE_EXAMPLE}}},
        "responses": SCORE_RESPONSES,
    }
    if named:
        op["parameters"] = [{"name": "name", "in": "path", "required": True,
                             "schema": {"type": "string"}, "description": "The model's name"}]
    return op


ADMIN_DOC = {"responses": {401: error_doc("Wrong or missing bearer token"),
                           403: error_doc("Admin endpoints disabled (CTR_ADMIN_TOKEN unset)"),
                           404: error_doc("Unknown model"),
                           409: error_doc("Nothing to roll back to, or the version failed to load")}}


def install_openapi(app: FastAPI, components: dict[str, Any]) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(components)
            schema["paths"] = {"/v1/models/{name}/score": {"post": score_operation(True)},
                               "/v1/score": {"post": score_operation(False)}, **schema["paths"]}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
