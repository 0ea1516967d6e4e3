"""Compiled execution: an OperationPlan (gql/execution_plan.py) run breadth-first.

graphql-core completes one object at a time, field by field. A plan is run one selection set at
a time over all the objects it applies to: the 50 threads of a page get their `id`s in one loop,
their `lastMessage` resolvers called together (so the DataLoader sees all 50 keys at once), and
the 50 last messages completed as one batch. The semantics are graphql-core's, which stays the
reference (tests/test_compiled_execution.py runs both on generated documents):

- fields of one selection set are resolved concurrently, mutation root fields one by one;
- a resolver's error gives null for its field and an error with `path` and `locations`; on a
  non-null field the null propagates to the nearest nullable parent (list items included);
- an error is reported once, at the position it nulled, and not at all when an ancestor
  position was nulled before it (graphql-core's `CollectedErrors`). "Before" is graphql-core's
  order of events: every value carries the tick it arrived at (a synchronous value its parent's,
  an awaited one the order it completed in), and within a tick, depth-first document order,
  which is how graphql-core meets them. Errors are reported in that order.
"""

import asyncio
import inspect
import itertools
from collections.abc import Awaitable, Sequence
from typing import Any

from graphql import GraphQLError, GraphQLSchema, located_error
from graphql.execution import ExecutionResult
from graphql.execution.executor import Executor
from graphql.execution.values import VariableValues, get_argument_values
from graphql.pyutils import Path, Undefined, is_awaitable, is_iterable
from graphql.type.definition import GraphQLResolveInfo, GraphQLResolveInfoHelpers

from gql.execution_plan import (
    ATTRIBUTE,
    DIRECT,
    LEAF,
    LIST,
    OBJECT,
    TYPENAME,
    FieldPlan,
    OperationPlan,
    SelectionPlan,
    ValuePlan,
)

_complete_leaf_value = Executor.complete_leaf_value


class _Failure:
    """A value that could not be completed: its error propagates to the nearest nullable."""

    __slots__ = ("error", "tick")

    def __init__(self, error: GraphQLError, tick: int) -> None:
        self.error = error
        self.tick = tick

    def before(self, other: "_Failure | None") -> bool:
        return other is None or self.tick < other.tick


async def execute_plan(
    plan: OperationPlan,
    schema: GraphQLSchema,
    context: Any,
    variables: VariableValues,
    *,
    root_value: Any = None,
    info_class: type,
) -> ExecutionResult:
    """The operation's result, as graphql-core's `execute` would give it."""
    return await _Run(plan, schema, context, variables, root_value, info_class).execute()


class _Run:
    def __init__(
        self,
        plan: OperationPlan,
        schema: GraphQLSchema,
        context: Any,
        variables: VariableValues,
        root_value: Any,
        info_class: type,
    ) -> None:
        self.plan = plan
        self.schema = schema
        self.context = context
        self.variables = variables
        self.root_value = root_value
        self.info_class = info_class
        # (tick, error, the position it nulled): sorted into graphql-core's order at the end.
        self.recorded: list[tuple[int, GraphQLError, Path | None]] = []
        self.clock = itertools.count(1)
        self.arrivals: dict[asyncio.Future[Any], int] = {}
        self.watched: set[asyncio.Future[Any]] = set()
        self.tracked: list[Awaitable[Any]] = []
        self.helpers = GraphQLResolveInfoHelpers(self._gather, self.tracked.extend)

    async def execute(self) -> ExecutionResult:
        root = self.plan.root
        data: dict[str, Any] | None
        if self.plan.serial:
            data = {}
            for field in root.fields:
                single = SelectionPlan(
                    type=root.type, fields=[field], positions={field.key: 0}, keys=(field.key,)
                )
                tick = next(self.clock)  # each root field starts after the one before ended
                (part,) = await self.objects(single, [self.root_value], [None], [tick])
                if isinstance(part, _Failure):
                    self.record(part.error, None, part.tick)
                    data = None
                    break
                data.update(part)
        else:
            (whole,) = await self.objects(root, [self.root_value], [None], [0])
            if isinstance(whole, _Failure):
                self.record(whole.error, None, whole.tick)
                data = None
            else:
                data = whole
        if self.tracked:
            await asyncio.gather(*self.tracked, return_exceptions=True)
        return ExecutionResult(data, self.reported() or None)

    def record(self, error: GraphQLError, position: Path | None, tick: int) -> None:
        """`error` nulled `position`; whether it is reported is decided at the end."""
        self.recorded.append((tick, error, position))

    def reported(self) -> list[GraphQLError]:
        """The errors graphql-core reports: in the order it meets them, each unless a position
        above its own was nulled by an earlier one."""
        ordered = sorted(
            self.recorded, key=lambda entry: (entry[0], self.document_order(entry[1].path))
        )
        nulled: set[Path | None] = set()
        errors: list[GraphQLError] = []
        for _, error, position in ordered:
            if None in nulled:
                break
            path = position
            while path is not None and path not in nulled:
                path = path.prev
            if path is not None:
                continue
            nulled.add(position)
            errors.append(error)
        return errors

    def document_order(self, path: list[str | int] | None) -> tuple[int, ...]:
        """Where `path` comes in a depth-first walk of the plan: fields in selection order,
        list items by index."""
        order: list[int] = []
        selection: SelectionPlan | None = self.plan.root
        value: ValuePlan | None = None
        for key in path or ():
            if isinstance(key, int):
                order.append(key)
                value = value.item if value is not None else None
                selection = value.selection if value is not None else None
                continue
            if selection is None or key not in selection.positions:
                break
            position = selection.positions[key]
            order.append(position)
            value = selection.fields[position].value
            selection = value.selection
        return tuple(order)

    def awaiting(self, value: Awaitable[Any]) -> "asyncio.Future[Any]":
        """`value` as a future whose completion is stamped with the next tick. A future two
        sources share (one DataLoader key) is stamped once."""
        future: asyncio.Future[Any] = asyncio.ensure_future(value)
        if future not in self.watched:
            self.watched.add(future)
            future.add_done_callback(self.arrived)
        return future

    def arrived(self, future: "asyncio.Future[Any]") -> None:
        self.arrivals[future] = next(self.clock)

    async def _gather(self, values: Sequence[Awaitable[Any]]) -> list[Any]:
        return list(await asyncio.gather(*values))

    # --- selection sets ------------------------------------------------------------------

    async def objects(
        self,
        selection: SelectionPlan,
        sources: list[Any],
        paths: list[Path | None],
        ticks: list[int],
    ) -> list[Any]:
        """Each source completed as `selection`: a dict, or a _Failure to propagate."""
        # Every key in place first: the response lists fields in the document's order, while
        # scalars are written before the objects and lists whose completion is awaited.
        results: list[Any] = [dict.fromkeys(selection.keys) for _ in sources]
        alive = list(range(len(sources)))
        typename = selection.type.name
        # Resolve every field first (graphql-core starts all resolvers of a selection set
        # before awaiting any), then await them together.
        resolved: list[tuple[FieldPlan, list[Any], list[Path] | None, list[int]]] = []
        pending: list[asyncio.Future[Any]] = []
        slots: list[tuple[list[Any], list[int], int]] = []
        # A value computed synchronously arrives with its object (graphql-core meets it in
        # the same pass); an awaited one when it completes. Each awaitable is a task of its
        # own, as in graphql-core: a resolver's first step may set up timeouts, context
        # variables or task groups, which belong to its task, never to the request's.
        for field in selection.fields:
            values, field_paths = self.resolve(field, sources, paths, alive, typename)
            arrivals = ticks
            if field.how > ATTRIBUTE:
                for position, value in enumerate(values):
                    if inspect.isawaitable(value):
                        if arrivals is ticks:
                            arrivals = list(ticks)
                        pending.append(self.awaiting(value))
                        slots.append((values, arrivals, position))
            resolved.append((field, values, field_paths, arrivals))
        if pending:
            settled = await asyncio.gather(*pending, return_exceptions=True)
            # The done callbacks have run: gather's own is the last of each future's.
            for future, (values, arrivals, position), value in zip(
                pending, slots, settled, strict=True
            ):
                if isinstance(value, BaseException) and not isinstance(value, Exception):
                    raise value
                values[position] = value
                arrivals[position] = self.arrivals[future]

        # Per object, the failure graphql-core would meet first: (tick, field position, it).
        failed: dict[int, tuple[int, int, _Failure]] = {}
        completions: list[tuple[FieldPlan, list[Path], Awaitable[list[Any]]]] = []
        for field, values, field_paths, arrivals in resolved:
            if field.value.kind == LEAF:
                self.leaves(
                    field,
                    values,
                    arrivals,
                    alive,
                    paths,
                    results,
                    failed,
                    typename,
                    selection.positions[field.key],
                )
                continue
            if field_paths is None:
                field_paths = [Path(paths[index], field.key, typename) for index in alive]
            completions.append(
                (
                    field,
                    field_paths,
                    self.complete(field.value, values, field_paths, arrivals, field),
                )
            )
        if completions:
            settled_values = await asyncio.gather(
                *(completion for *_, completion in completions), return_exceptions=True
            )
            for (field, field_paths, _), completed in zip(completions, settled_values, strict=True):
                if isinstance(completed, BaseException):
                    if not isinstance(completed, Exception):
                        raise completed
                    # Completing the field failed as a whole: each object's value is the error.
                    tick = next(self.clock)
                    completed = [
                        _Failure(located_error(completed, field.nodes, path.as_list()), tick)
                        for path in field_paths
                    ]
                key = field.key
                non_null = field.value.non_null
                for index, path, value in zip(alive, field_paths, completed, strict=True):
                    if type(value) is _Failure:
                        if non_null:
                            _keep_first(failed, index, value, selection.positions[key])
                        else:
                            self.record(value.error, path, value.tick)
                            results[index][key] = None
                    else:
                        results[index][key] = value
        for index, (_, _, failure) in failed.items():
            results[index] = failure
        return results

    def resolve(
        self,
        field: FieldPlan,
        sources: list[Any],
        paths: list[Path | None],
        alive: list[int],
        typename: str,
    ) -> tuple[list[Any], list[Path] | None]:
        """The field's raw value for each alive source (an exception where it raised)."""
        how = field.how
        if how == TYPENAME:
            return [typename] * len(alive), None
        if how == ATTRIBUTE:
            attribute = field.attribute
            try:
                return [getattr(sources[index], attribute) for index in alive], None
            except Exception:  # each source again, keeping each one's error
                return [_attribute_or_error(sources[index], attribute) for index in alive], None
        key = field.key
        values: list[Any] = []
        append = values.append
        resolve = field.resolve
        assert resolve is not None or how != DIRECT
        if how == DIRECT and field.info_parameter is None:
            # A plain method of the object (`unreadCount`): no info, so no path to build.
            self_parameter = field.self_parameter
            for index in alive:
                try:
                    if self_parameter is None:
                        append(resolve())  # type: ignore[misc]
                    else:
                        append(resolve(**{self_parameter: sources[index]}))  # type: ignore[misc]
                except Exception as raised:  # becomes the field's error
                    append(raised)
            return values, None
        field_paths = [Path(paths[index], key, typename) for index in alive]
        if how == DIRECT:
            self_parameter = field.self_parameter
            info_parameter = field.info_parameter
            for index, path in zip(alive, field_paths, strict=True):
                kwargs: dict[str, Any] = {}
                if self_parameter is not None:
                    kwargs[self_parameter] = sources[index]
                kwargs[info_parameter] = self.info_class(  # type: ignore[index]
                    _raw_info=self.resolve_info(field, path), _field=field.strawberry_field
                )
                try:
                    append(resolve(**kwargs))  # type: ignore[misc]
                except Exception as raised:  # becomes the field's error
                    append(raised)
            return values, field_paths
        arguments = field.arguments
        if arguments is None:
            assert field.definition is not None
            try:
                arguments = get_argument_values(field.definition, field.nodes[0], self.variables)
            except Exception as raised:  # every source's field gets the error
                return [raised] * len(alive), field_paths
        if resolve is None:
            from graphql.execution.executor import default_field_resolver

            resolve = default_field_resolver
        for index, path in zip(alive, field_paths, strict=True):
            try:
                append(resolve(sources[index], self.resolve_info(field, path), **arguments))
            except Exception as raised:  # becomes the field's error
                append(raised)
        return values, field_paths

    def resolve_info(self, field: FieldPlan, path: Path) -> GraphQLResolveInfo[Any]:
        assert field.definition is not None
        plan = self.plan
        return GraphQLResolveInfo(
            field.name,
            field.nodes,
            field.definition.type,
            field.parent_type,
            path,
            self.schema,
            plan.fragments,
            self.root_value,
            plan.operation,
            self.variables,
            self.context,
            is_awaitable,
            None,
            self.helpers,
        )

    def leaves(
        self,
        field: FieldPlan,
        values: list[Any],
        ticks: list[int],
        alive: list[int],
        paths: list[Path | None],
        results: list[Any],
        failed: dict[int, tuple[int, int, _Failure]],
        typename: str,
        position: int,
    ) -> None:
        """Scalars and enums of one field, written into each source's result."""
        plan = field.value
        key = field.key
        passthrough = plan.passthrough
        names = plan.enum_names
        coerce = plan.graphql_type.coerce_output_value  # type: ignore[union-attr]
        nullable = not plan.non_null
        for offset, (index, value) in enumerate(zip(alive, values, strict=True)):
            if type(value) is passthrough:
                results[index][key] = value
                continue
            if value is None:
                if nullable:
                    results[index][key] = None
                    continue
            elif names is not None:
                try:
                    results[index][key] = names[value]
                    continue
                except (KeyError, TypeError):
                    pass
            elif not isinstance(value, Exception):
                # The common case in one call: the scalar's own coercion (DateTime's isoformat,
                # Int's range check). Anything it refuses takes the path below, which reports it.
                try:
                    completed = coerce(value)
                except Exception:
                    completed = None
                if completed is not None and completed is not Undefined:
                    results[index][key] = completed
                    continue
            completed = self.leaf(plan, value, field, paths[index], typename, ticks[offset])
            if type(completed) is _Failure:
                if plan.non_null:
                    _keep_first(failed, index, completed, position)
                else:
                    self.record(completed.error, Path(paths[index], key, typename), completed.tick)
                    results[index][key] = None
            else:
                results[index][key] = completed

    def leaf(
        self,
        plan: ValuePlan,
        value: Any,
        field: FieldPlan,
        parent: Path | None,
        typename: str,
        tick: int,
    ) -> Any:
        if value is None or value is Undefined:
            if plan.non_null:
                return self.null_failure(field, Path(parent, field.key, typename), tick)
            return None
        try:
            if isinstance(value, Exception):
                raise value
            return _complete_leaf_value(plan.graphql_type, value)  # type: ignore[arg-type]
        except Exception as raised:  # becomes the field's error
            return _Failure(
                located_error(raised, field.nodes, Path(parent, field.key, typename).as_list()),
                tick,
            )

    def null_failure(self, field: FieldPlan, path: Path, tick: int) -> _Failure:
        message = (
            f"Cannot return null for non-nullable field {field.parent_type.name}.{field.name}."
        )
        return _Failure(located_error(TypeError(message), field.nodes, path.as_list()), tick)

    # --- values ----------------------------------------------------------------------------

    async def complete(
        self,
        plan: ValuePlan,
        values: list[Any],
        paths: list[Path],
        ticks: list[int],
        field: FieldPlan,
    ) -> list[Any]:
        """Each value completed as `plan`: the result, or a _Failure to propagate."""
        completed: list[Any] = [None] * len(values)
        todo: list[int] = []
        for position, value in enumerate(values):
            if value is None or value is Undefined:
                if plan.non_null:
                    completed[position] = self.null_failure(field, paths[position], ticks[position])
            elif isinstance(value, Exception):
                completed[position] = _Failure(
                    located_error(value, field.nodes, paths[position].as_list()), ticks[position]
                )
            else:
                todo.append(position)
        if not todo:
            return completed
        kind = plan.kind
        if kind == LEAF:
            for position in todo:
                try:
                    completed[position] = _complete_leaf_value(
                        plan.graphql_type,  # type: ignore[arg-type]
                        values[position],
                    )
                except Exception as raised:  # becomes the value's error
                    completed[position] = _Failure(
                        located_error(raised, field.nodes, paths[position].as_list()),
                        ticks[position],
                    )
        elif kind == OBJECT:
            assert plan.selection is not None
            objects = await self.objects(
                plan.selection,
                [values[position] for position in todo],
                [paths[position] for position in todo],
                [ticks[position] for position in todo],
            )
            for position, value in zip(todo, objects, strict=True):
                completed[position] = value
        elif kind == LIST:
            await self.lists(plan, values, paths, ticks, field, todo, completed)
        return completed

    async def lists(
        self,
        plan: ValuePlan,
        values: list[Any],
        paths: list[Path],
        ticks: list[int],
        field: FieldPlan,
        todo: list[int],
        completed: list[Any],
    ) -> None:
        """List values: all their items completed as one batch, then regrouped."""
        item_plan = plan.item
        assert item_plan is not None
        items: list[Any] = []
        item_paths: list[Path] = []
        item_ticks: list[int] = []
        spans: list[tuple[int, int, int]] = []
        for position in todo:
            value = values[position]
            if not is_iterable(value):
                message = (
                    "Expected Iterable, but did not find one for field"
                    f" '{field.parent_type.name}.{field.name}'."
                )
                completed[position] = _Failure(
                    located_error(GraphQLError(message), field.nodes, paths[position].as_list()),
                    ticks[position],
                )
                continue
            start = len(items)
            path = paths[position]
            tick = ticks[position]
            try:
                for index, item in enumerate(value):
                    items.append(item)
                    item_paths.append(Path(path, index, None))
                    item_ticks.append(tick)
            except Exception as raised:  # an iterator that fails midway: the field's error
                del items[start:], item_paths[start:], item_ticks[start:]
                completed[position] = _Failure(
                    located_error(raised, field.nodes, path.as_list()), tick
                )
                continue
            spans.append((position, start, len(items)))
        awaited = [position for position, item in enumerate(items) if inspect.isawaitable(item)]
        if awaited:
            # Items may be awaitables of their own, as graphql-core allows.
            futures = [self.awaiting(items[position]) for position in awaited]
            settled = await asyncio.gather(*futures, return_exceptions=True)
            for position, future, item in zip(awaited, futures, settled, strict=True):
                if isinstance(item, BaseException) and not isinstance(item, Exception):
                    raise item
                items[position] = item
                item_ticks[position] = self.arrivals[future]
        done = await self.complete(item_plan, items, item_paths, item_ticks, field) if items else []
        for position, start, end in spans:
            regrouped = done[start:end]
            failure: _Failure | None = None
            for offset, item in enumerate(regrouped):
                if type(item) is _Failure:
                    if item_plan.non_null:
                        if item.before(failure):
                            failure = item
                        continue
                    self.record(item.error, item_paths[start + offset], item.tick)
                    regrouped[offset] = None
            completed[position] = failure if failure is not None else regrouped


def _keep_first(
    failed: dict[int, tuple[int, int, _Failure]], index: int, failure: _Failure, position: int
) -> None:
    """Keep, for the object at `index`, the failure met first: earlier tick, earlier field."""
    known = failed.get(index)
    if known is None or (failure.tick, position) < known[:2]:
        failed[index] = (failure.tick, position, failure)


def _attribute_or_error(source: Any, attribute: str) -> Any:
    try:
        return getattr(source, attribute)
    except Exception as raised:  # becomes the field's error
        return raised
