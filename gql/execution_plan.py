"""Execution plans: an operation planned once per document, then run by gql/compiled_execution.py.

graphql-core decides, for every field of every object it completes, how to resolve the field
and how to complete its type: it collects the sub-selection, builds a resolve info, looks up
the arguments, asks whether the type is non-null, a list, a leaf... Strawberry then wraps every
resolver once more. For a page of 50 threads that is ~750 fields and ~1,200 values, each paying
those questions again. A plan answers them once per document (and per value of the variables
that `@skip`/`@include` read): the collected fields of every selection set, each field's way to
get its value (an attribute, a resolver called directly, Strawberry's resolver) and its way to
complete it (a serializer, an enum's names, a list, a non-null check, a nested plan).

What a plan does not cover (introspection, `@defer`/`@stream`, abstract types) is reported by
`plan_operation` returning None, and runs on graphql-core unchanged.
"""

import inspect
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from graphql import (
    BooleanValueNode,
    DirectiveNode,
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    GraphQLBoolean,
    GraphQLEnumType,
    GraphQLError,
    GraphQLField,
    GraphQLID,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLSchema,
    GraphQLString,
    OperationDefinitionNode,
    OperationType,
    VariableNode,
    is_leaf_type,
    is_list_type,
    is_non_null_type,
    is_object_type,
    visit,
)
from graphql.execution.collect_fields import (
    FieldDetails,
    FragmentDetails,
    collect_fields,
    collect_subfields,
)
from graphql.execution.values import VariableValues, get_argument_values
from graphql.language import Visitor

# How a field gets its value.
TYPENAME = 0  # `__typename`: the parent type's name
ATTRIBUTE = 1  # a Strawberry field without resolver: an attribute of the converted object
DIRECT = 2  # a Strawberry resolver without GraphQL arguments, called as a plain function
RESOLVER = 3  # anything else: the GraphQL field's own resolve function (Strawberry's wrapper)

# How a value is completed.
LEAF = 0
LIST = 1
OBJECT = 2

# The strawberry field behind a graphql-core field (strawberry's schema converter sets it).
_STRAWBERRY_FIELD = "strawberry-definition"

_CONDITIONAL_DIRECTIVES = ("skip", "include")


class NotPlannable(Exception):
    """The operation uses something plans do not cover; graphql-core runs it."""


@dataclass(slots=True, eq=False)
class ValuePlan:
    """How to complete one value of a GraphQL output type."""

    non_null: bool
    kind: int
    graphql_type: GraphQLOutputType  # without the non-null wrapper
    # Leaves: values of exactly this Python type are already their output (str for String and
    # ID, bool for Boolean); enums: member -> name; anything else goes to the type's coercion.
    passthrough: type | None = None
    enum_names: Mapping[Any, str] | None = None
    item: "ValuePlan | None" = None
    selection: "SelectionPlan | None" = None


@dataclass(slots=True, eq=False)
class FieldPlan:
    """One response key of a selection set: how to resolve it and complete its value."""

    key: str
    name: str
    parent_type: GraphQLObjectType
    definition: GraphQLField | None  # None for __typename
    nodes: list[FieldNode]
    how: int
    value: ValuePlan
    attribute: str = ""
    resolve: Callable[..., Any] | None = None
    self_parameter: str | None = None
    info_parameter: str | None = None
    strawberry_field: Any = None
    # The arguments when they hold no variables (coerced once); None: coerce per execution.
    arguments: dict[str, Any] | None = None


@dataclass(slots=True, eq=False)
class SelectionPlan:
    type: GraphQLObjectType
    fields: list[FieldPlan]
    # response key -> position among `fields`: the order graphql-core would execute them in,
    # which orders the errors (gql/compiled_execution.py).
    positions: dict[str, int]
    keys: tuple[str, ...]  # the response keys, in order


@dataclass(slots=True, eq=False)
class OperationPlan:
    operation: OperationDefinitionNode
    root: SelectionPlan
    serial: bool  # mutations: root fields one after the other
    fragments: dict[str, FragmentDefinitionNode]


# How Strawberry reads a field without resolver off its object (its config.default_resolver).
DefaultResolver = Callable[[Any, str], Any]


def conditional_variables(document: DocumentNode) -> tuple[str, ...]:
    """The variables `@skip(if:)` and `@include(if:)` read: a plan is valid for their values."""
    names: list[str] = []

    class Conditions(Visitor):
        def enter_directive(self, node: DirectiveNode, *_: Any) -> None:
            if node.name.value not in _CONDITIONAL_DIRECTIVES:
                return
            for argument in node.arguments or ():
                if isinstance(argument.value, VariableNode):
                    name = argument.value.name.value
                    if name not in names:
                        names.append(name)

    visit(document, Conditions())
    return tuple(names)


class PlanCache:
    """Plans by document text, operation and the values of the conditional variables."""

    def __init__(
        self, schema: GraphQLSchema, default_resolver: DefaultResolver, maxsize: int = 256
    ) -> None:
        self.schema = schema
        self.default_resolver = default_resolver
        self.maxsize = maxsize
        self._plans: OrderedDict[tuple[Any, ...], OperationPlan | None] = OrderedDict()
        self._conditions: dict[str, tuple[str, ...]] = {}

    def plan_for(
        self,
        query: str,
        document: DocumentNode,
        operation: OperationDefinitionNode,
        variables: VariableValues,
    ) -> OperationPlan | None:
        """The operation's plan (built on first use), or None when graphql-core must run it."""
        conditions = self._conditions.get(query)
        if conditions is None:
            if len(self._conditions) >= self.maxsize:
                self._conditions.clear()
            conditions = self._conditions[query] = conditional_variables(document)
        key = (
            query,
            operation.name.value if operation.name else None,
            tuple(_hashable(variables.coerced.get(name)) for name in conditions),
        )
        try:
            plan = self._plans[key]
        except KeyError:
            pass
        else:
            self._plans.move_to_end(key)
            return plan
        try:
            plan = plan_operation(
                self.schema, self.default_resolver, document, operation, variables
            )
        except (NotPlannable, GraphQLError):
            # A GraphQLError: collecting the fields failed (`@include(if: $v)` with $v null);
            # graphql-core runs the operation and reports it as a request error.
            plan = None
        self._plans[key] = plan
        if len(self._plans) > self.maxsize:
            self._plans.popitem(last=False)
        return plan


def _hashable(value: Any) -> Any:
    return value if isinstance(value, bool | None) else repr(value)


def plan_operation(
    schema: GraphQLSchema,
    default_resolver: DefaultResolver,
    document: DocumentNode,
    operation: OperationDefinitionNode,
    variables: VariableValues,
) -> OperationPlan:
    """The plan of a validated operation; NotPlannable when graphql-core must run it."""
    root_type = schema.get_root_type(operation.operation)
    if root_type is None:
        raise NotPlannable(f"the schema has no {operation.operation.value} type")
    fragment_definitions = {
        definition.name.value: definition
        for definition in document.definitions
        if isinstance(definition, FragmentDefinitionNode)
    }
    planner = _Planner(
        schema,
        default_resolver,
        operation,
        variables,
        {name: FragmentDetails(definition) for name, definition in fragment_definitions.items()},
    )
    collected = collect_fields(
        schema, planner.fragments, variables, root_type, operation, hide_suggestions=False
    )
    if collected.new_defer_usages:
        raise NotPlannable("@defer")
    root = planner.selection(root_type, collected.grouped_field_set)
    return OperationPlan(
        operation=operation,
        root=root,
        serial=operation.operation is OperationType.MUTATION,
        fragments=fragment_definitions,
    )


class _Planner:
    def __init__(
        self,
        schema: GraphQLSchema,
        default_resolver: DefaultResolver,
        operation: OperationDefinitionNode,
        variables: VariableValues,
        fragments: dict[str, FragmentDetails],
    ) -> None:
        self.schema = schema
        self.default_resolver = default_resolver
        self.operation = operation
        self.variables = variables
        self.fragments = fragments
        self.subscription_root = (
            schema.subscription_type if operation.operation is OperationType.SUBSCRIPTION else None
        )

    def selection(
        self, object_type: GraphQLObjectType, grouped: Mapping[str, list[FieldDetails]]
    ) -> SelectionPlan:
        if object_type.is_type_of is not None:
            raise NotPlannable(f"{object_type.name} has is_type_of")
        fields: list[FieldPlan] = []
        for key, details in grouped.items():
            field = self.field(object_type, key, details)
            if field is not None:
                fields.append(field)
        return SelectionPlan(
            type=object_type,
            fields=fields,
            positions={field.key: position for position, field in enumerate(fields)},
            keys=tuple(field.key for field in fields),
        )

    def field(
        self, parent_type: GraphQLObjectType, key: str, details: list[FieldDetails]
    ) -> FieldPlan | None:
        first = details[0]
        if first.defer_usage is not None or first.fragment_variable_values is not None:
            raise NotPlannable("@defer or fragment arguments")
        node = first.node
        nodes = [detail.node for detail in details]
        name = node.name.value
        if any(
            directive.name.value == "stream"
            for detail in details
            for directive in detail.node.directives or ()
        ):
            raise NotPlannable("@stream")
        if name == "__typename":
            return FieldPlan(
                key=key,
                name=name,
                parent_type=parent_type,
                definition=None,
                nodes=nodes,
                how=TYPENAME,
                value=ValuePlan(
                    non_null=True, kind=LEAF, graphql_type=GraphQLString, passthrough=str
                ),
            )
        if name.startswith("__"):
            raise NotPlannable("introspection")
        definition = parent_type.fields.get(name)
        if definition is None:  # validation rejects unknown fields; graphql-core skips them
            return None
        value = self.value(definition.type, details)
        plan = FieldPlan(
            key=key,
            name=name,
            parent_type=parent_type,
            definition=definition,
            nodes=nodes,
            how=RESOLVER,
            value=value,
            resolve=definition.resolve,
            arguments=self.static_arguments(definition, node),
        )
        strawberry_field = (definition.extensions or {}).get(_STRAWBERRY_FIELD)
        plan.strawberry_field = strawberry_field
        if strawberry_field is None or parent_type is self.subscription_root:
            # Subscription root fields resolve to the event itself (Strawberry's resolve).
            return plan
        if strawberry_field.extensions:
            return plan  # field extensions (permissions included) run in Strawberry's wrapper
        resolver = strawberry_field.base_resolver
        if resolver is None:
            # An attribute read, unless Strawberry was told to read fields some other way.
            if (
                getattr(definition.resolve, "_is_default", False)
                and self.default_resolver is getattr
            ):
                plan.how = ATTRIBUTE
                plan.attribute = strawberry_field.python_name
                plan.resolve = None
            return plan
        if definition.args or resolver.root_parameter is not None:
            return plan
        if resolver.parent_parameter is not None:
            return plan
        reserved = {resolver.self_parameter, resolver.info_parameter} - {None}
        if len(reserved) != len(inspect.signature(resolver.wrapped_func).parameters):
            return plan
        plan.how = DIRECT
        plan.resolve = resolver.wrapped_func
        plan.self_parameter = resolver.self_parameter.name if resolver.self_parameter else None
        plan.info_parameter = resolver.info_parameter.name if resolver.info_parameter else None
        return plan

    def static_arguments(self, definition: GraphQLField, node: FieldNode) -> dict[str, Any] | None:
        if not definition.args and not node.arguments:
            return {}
        if any(_holds_variable(argument.value) for argument in node.arguments or ()):
            return None
        try:
            return get_argument_values(definition, node, self.variables)
        except Exception:  # the error is raised again, located, at execution
            return None

    def value(self, graphql_type: GraphQLOutputType, details: list[FieldDetails]) -> ValuePlan:
        non_null = is_non_null_type(graphql_type)
        if isinstance(graphql_type, GraphQLNonNull):
            graphql_type = graphql_type.of_type
        if is_list_type(graphql_type):
            assert isinstance(graphql_type, GraphQLList)
            return ValuePlan(
                non_null=non_null,
                kind=LIST,
                graphql_type=graphql_type,
                item=self.value(graphql_type.of_type, details),
            )
        if is_leaf_type(graphql_type):
            return ValuePlan(
                non_null=non_null,
                kind=LEAF,
                graphql_type=graphql_type,
                passthrough=_passthrough(graphql_type),
                enum_names=_enum_names(graphql_type),
            )
        if is_object_type(graphql_type):
            assert isinstance(graphql_type, GraphQLObjectType)
            collected = collect_subfields(
                self.schema,
                self.fragments,
                self.variables,
                self.operation,
                graphql_type,
                details,
            )
            if collected.new_defer_usages:
                raise NotPlannable("@defer")
            return ValuePlan(
                non_null=non_null,
                kind=OBJECT,
                graphql_type=graphql_type,
                selection=self.selection(graphql_type, collected.grouped_field_set),
            )
        raise NotPlannable(f"abstract type {graphql_type}")


def _passthrough(graphql_type: Any) -> type | None:
    """The Python type whose values the scalar's coercion returns unchanged."""
    if graphql_type is GraphQLString or graphql_type is GraphQLID:
        return str
    if graphql_type is GraphQLBoolean:
        return bool
    return None


def _enum_names(graphql_type: Any) -> Mapping[Any, str] | None:
    """Enum members (Strawberry's Python enums) to their GraphQL names."""
    if not isinstance(graphql_type, GraphQLEnumType):
        return None
    wrapped = getattr(graphql_type, "wrapped_cls", None)
    if not (isinstance(wrapped, type) and issubclass(wrapped, Enum)):
        return None
    names: dict[Any, str] = {}
    for member in wrapped:
        for name, value in graphql_type.values.items():
            if value.value == member.value:
                names[member] = name
                break
    return names


def _holds_variable(value: Any) -> bool:
    if isinstance(value, VariableNode):
        return True
    if isinstance(value, BooleanValueNode):
        return False
    for attribute in ("values", "fields"):
        children = getattr(value, attribute, None)
        if children:
            return any(_holds_variable(getattr(child, "value", child)) for child in children)
    return False
