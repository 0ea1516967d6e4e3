"""The schema wa-inbox serves; `python -m gql export-schema` prints it as schema.graphql."""

from typing import Any

import strawberry
from strawberry.extensions import (
    AddValidationRules,
    MaxTokensLimiter,
    ParserCache,
    ValidationCache,
)

from gql.errors import ErrorShaping
from gql.limits import QueryLimits
from gql.mutations import Mutation
from gql.queries import Query
from gql.subscriptions import Subscription


class InboxSchema(strawberry.Schema):
    query_limits: QueryLimits = QueryLimits()

    def process_errors(self, errors: Any, execution_context: Any = None) -> None:
        """Strawberry would log every error with its trace, expected ones included.

        ErrorShaping logs what is unexpected, in full, under the request id; a client's bad
        input is not an operator's problem.
        """


def build_schema(limits: QueryLimits | None = None) -> strawberry.Schema:
    """The schema, with `limits` enforced on every operation it runs (websockets included)."""
    limits = limits or QueryLimits()
    rules = list(limits.validation_rules())
    schema = InboxSchema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        extensions=[
            ErrorShaping,
            lambda: MaxTokensLimiter(max_token_count=limits.max_tokens),
            lambda: ParserCache(maxsize=256),
            lambda: AddValidationRules(rules),
            lambda: ValidationCache(maxsize=256),
        ],
    )
    schema.query_limits = limits
    return schema


def schema_sdl() -> str:
    return build_schema().as_str() + "\n"
