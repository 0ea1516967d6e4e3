"""Limits on what one GraphQL document may ask for, applied over HTTP and websockets alike.

Depth and aliases are validation rules (so a refused document is a validation error with
`extensions.code`, never a partial execution); tokens are bounded by the parser itself;
introspection can be switched off with graphql-core's own rule.
"""

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from graphql import (
    ASTValidationRule,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    NoSchemaIntrospectionCustomRule,
    OperationDefinitionNode,
    SelectionSetNode,
)
from graphql.validation import ASTValidationContext

QUERY_TOO_COMPLEX = "QUERY_TOO_COMPLEX"


@dataclass(frozen=True)
class QueryLimits:
    max_depth: int = 10
    max_aliases: int = 30
    max_tokens: int = 2_000
    introspection: bool = True

    def validation_rules(self) -> tuple[type[ASTValidationRule], ...]:
        rules: list[type[ASTValidationRule]] = [
            _depth_rule(self.max_depth),
            _alias_rule(self.max_aliases),
        ]
        if not self.introspection:
            rules.append(NoSchemaIntrospectionCustomRule)
        return tuple(rules)


def _depth_rule(max_depth: int) -> type[ASTValidationRule]:
    class MaxDepth(ASTValidationRule):
        def enter_operation_definition(self, node: OperationDefinitionNode, *_: Any) -> None:
            fragments = _fragments(self.context)
            depth = _depth(node.selection_set, fragments, frozenset())
            if depth > max_depth:
                self.report_error(
                    GraphQLError(
                        f"the operation is {depth} levels deep; at most {max_depth} are allowed "
                        "(MAX_QUERY_DEPTH)",
                        node,
                        extensions={"code": QUERY_TOO_COMPLEX},
                    )
                )

    return MaxDepth


def _alias_rule(max_aliases: int) -> type[ASTValidationRule]:
    class MaxAliases(ASTValidationRule):
        """Aliased fields an operation would run, a fragment counted at every spread."""

        def enter_operation_definition(self, node: OperationDefinitionNode, *_: Any) -> None:
            fragments = _fragments(self.context)
            aliases = _aliases(node.selection_set, fragments, frozenset(), {})
            if aliases > max_aliases:
                self.report_error(
                    GraphQLError(
                        f"the operation uses {aliases} aliased fields; at most {max_aliases} "
                        "are allowed (MAX_QUERY_ALIASES)",
                        node,
                        extensions={"code": QUERY_TOO_COMPLEX},
                    )
                )

    return MaxAliases


def _aliases(
    selection_set: SelectionSetNode | None,
    fragments: dict[str, FragmentDefinitionNode],
    visiting: Collection[str],
    per_fragment: dict[str, int],
) -> int:
    if selection_set is None:
        return 0
    total = 0
    for selection in selection_set.selections:
        if isinstance(selection, FieldNode):
            total += (selection.alias is not None) + _aliases(
                selection.selection_set, fragments, visiting, per_fragment
            )
        elif isinstance(selection, InlineFragmentNode):
            total += _aliases(selection.selection_set, fragments, visiting, per_fragment)
        elif isinstance(selection, FragmentSpreadNode):
            name = selection.name.value
            fragment = fragments.get(name)
            if fragment is None or name in visiting:
                continue
            if name not in per_fragment:
                # Counted once per fragment, then multiplied by its spreads: nested spreads
                # cannot make the count itself exponential.
                per_fragment[name] = _aliases(
                    fragment.selection_set, fragments, {*visiting, name}, per_fragment
                )
            total += per_fragment[name]
    return total


def _fragments(context: ASTValidationContext) -> dict[str, FragmentDefinitionNode]:
    return {
        definition.name.value: definition
        for definition in context.document.definitions
        if isinstance(definition, FragmentDefinitionNode)
    }


def _depth(
    selection_set: SelectionSetNode | None,
    fragments: dict[str, FragmentDefinitionNode],
    visiting: Collection[str],
) -> int:
    """Levels of fields below `selection_set`; introspection fields (`__schema`, `__type`)
    are not counted: their nesting is bounded by the schema and GraphiQL needs it deep."""
    if selection_set is None:
        return 0
    deepest = 0
    for selection in selection_set.selections:
        if isinstance(selection, FieldNode):
            if selection.name.value.startswith("__"):
                continue
            depth = 1 + _depth(selection.selection_set, fragments, visiting)
        elif isinstance(selection, InlineFragmentNode):
            depth = _depth(selection.selection_set, fragments, visiting)
        elif isinstance(selection, FragmentSpreadNode):
            name = selection.name.value
            fragment = fragments.get(name)
            # Unknown and cyclic fragments are reported by graphql-core's own rules.
            if fragment is None or name in visiting:
                continue
            depth = _depth(fragment.selection_set, fragments, {*visiting, name})
        else:
            continue
        deepest = max(deepest, depth)
    return deepest
