"""The schema wa-inbox serves; `python -m gql export-schema` prints it as schema.graphql."""

from typing import Any

import strawberry
from strawberry.extensions import ParserCache, ValidationCache

from gql.errors import ErrorShaping
from gql.mutations import Mutation
from gql.queries import Query
from gql.subscriptions import Subscription


class InboxSchema(strawberry.Schema):
    def process_errors(self, errors: Any, execution_context: Any = None) -> None:
        """Strawberry would log every error with its trace, expected ones included.

        ErrorShaping logs what is unexpected, in full, under the request id; a client's bad
        input is not an operator's problem.
        """


def build_schema() -> strawberry.Schema:
    return InboxSchema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        extensions=[
            ErrorShaping,
            lambda: ParserCache(maxsize=256),
            lambda: ValidationCache(maxsize=256),
        ],
    )


def schema_sdl() -> str:
    return build_schema().as_str() + "\n"
