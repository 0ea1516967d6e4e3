"""Runs validated operations: on their compiled plan, or on graphql-core when no plan covers them.

HTTP, websocket queries and the live-update fan-out all come through here, after their own
parse and validation (gql/http.py `checked_document`): Strawberry's `schema.execute` would parse
and validate again and wrap every resolver in its extension machinery, for nothing we use.
"""

from typing import Any, Literal

import strawberry
from graphql import DocumentNode, GraphQLError, OperationDefinitionNode, execute
from graphql.execution import ExecutionResult, Executor, execute_subscription_event
from graphql.execution.values import VariableValues
from graphql.pyutils import Undefined

from domain.metrics import InboxMetrics
from gql.compiled_execution import execute_plan
from gql.errors import shape_error
from gql.execution_plan import OperationPlan, PlanCache

ExecutorChoice = Literal["compiled", "reference"]


class Operations:
    """One per application: the plan cache and the choice of executor (GRAPHQL_EXECUTOR)."""

    def __init__(
        self,
        schema: strawberry.Schema,
        metrics: InboxMetrics,
        executor: ExecutorChoice = "compiled",
    ) -> None:
        self.schema = schema._schema
        self.metrics = metrics
        self.executor = executor
        self.plans = PlanCache(self.schema, schema.config.default_resolver)
        self.info_class = schema.config.info_class

    def plan_for(
        self,
        query: str,
        document: DocumentNode,
        operation: OperationDefinitionNode,
        variables: VariableValues,
    ) -> OperationPlan | None:
        """The operation's plan; None when graphql-core runs it (or GRAPHQL_EXECUTOR=reference)."""
        if self.executor != "compiled":
            return None
        return self.plans.plan_for(query, document, operation, variables)

    async def run(
        self,
        query: str,
        document: DocumentNode,
        operation: OperationDefinitionNode,
        variables: VariableValues,
        context: Any,
        *,
        root_value: Any = None,
    ) -> ExecutionResult:
        """The result of a validated operation whose variables are coerced, errors shaped."""
        plan = self.plan_for(query, document, operation, variables)
        if plan is None:
            result = await self.run_reference(document, operation, variables, context, root_value)
        else:
            result = await self.run_plan(plan, variables, context, root_value=root_value)
        return result

    async def run_plan(
        self,
        plan: OperationPlan,
        variables: VariableValues,
        context: Any,
        *,
        root_value: Any = None,
    ) -> ExecutionResult:
        self.metrics.graphql_compiled_executions += 1
        result = await execute_plan(
            plan, self.schema, context, variables, root_value=root_value, info_class=self.info_class
        )
        return _shaped(result, context)

    async def run_event(
        self, plan: OperationPlan | None, executor: Executor[Any], payload: Any, context: Any
    ) -> ExecutionResult:
        """A subscription event for an audience: on its plan, or graphql-core's per-event
        execution of the audience's `executor`, errors shaped."""
        if plan is not None:
            return await self.run_plan(plan, executor.variable_values, context, root_value=payload)
        self.metrics.graphql_reference_executions += 1
        outcome = execute_subscription_event(executor.build_per_event_executor(payload))
        result = await outcome if not isinstance(outcome, ExecutionResult) else outcome
        return _shaped(result, context)

    async def run_reference(
        self,
        document: DocumentNode,
        operation: OperationDefinitionNode,
        variables: VariableValues,
        context: Any,
        root_value: Any = None,
    ) -> ExecutionResult:
        """graphql-core's own execution, for what plans do not cover (introspection...)."""
        self.metrics.graphql_reference_executions += 1
        outcome = execute(
            self.schema,
            document,
            root_value=root_value,
            context_value=context,
            variable_values=_inputs(variables),
            operation_name=operation.name.value if operation.name else None,
        )
        result = await outcome if not isinstance(outcome, ExecutionResult) else outcome
        return _shaped(result, context)


def _inputs(variables: VariableValues) -> dict[str, Any]:
    """The variables as the request gave them (graphql-core coerces them again)."""
    return {
        name: source.value
        for name, source in variables.sources.items()
        if source.value is not Undefined
    }


def _shaped(result: ExecutionResult, context: Any) -> ExecutionResult:
    if result.errors:
        request_id = getattr(context, "request_id", "-")
        shaped: list[GraphQLError] = [shape_error(error, request_id) for error in result.errors]
        result.errors = shaped
    return result
