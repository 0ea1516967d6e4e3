"""Lookahead: what a field's selection asks for below it, fragments included.

A resolver that knows its caller wants more can read it in the same statement and prime the
DataLoader the deeper field reads from (the thread page and each thread's last message): the
answer is the same, one round trip fewer. `@skip`/`@include` are not evaluated, so a skipped
field is read for nothing at worst, never missed.
"""

from typing import Any

from graphql import FieldNode, FragmentSpreadNode, InlineFragmentNode, SelectionSetNode
from strawberry.types import Info


def selects(info: Info[Any, Any], *path: str) -> bool:
    """Whether the field being resolved selects `path` (field names, e.g. edges, node, x)."""
    raw = info._raw_info
    fragments = raw.fragments
    return any(
        _selects(node.selection_set, path, fragments, frozenset()) for node in raw.field_nodes
    )


def _selects(
    selection_set: SelectionSetNode | None,
    path: tuple[str, ...],
    fragments: dict[str, Any],
    visiting: frozenset[str],
) -> bool:
    if not path:
        return True
    if selection_set is None:
        return False
    name, rest = path[0], path[1:]
    for selection in selection_set.selections:
        if isinstance(selection, FieldNode):
            if selection.name.value == name and _selects(
                selection.selection_set, rest, fragments, visiting
            ):
                return True
        elif isinstance(selection, InlineFragmentNode):
            if _selects(selection.selection_set, path, fragments, visiting):
                return True
        elif isinstance(selection, FragmentSpreadNode):
            spread = selection.name.value
            fragment = fragments.get(spread)
            if (
                fragment is not None
                and spread not in visiting
                and _selects(fragment.selection_set, path, fragments, visiting | {spread})
            ):
                return True
    return False
