"""Compiled execution answers exactly as graphql-core does (issue 14): a differential test.

Two real apps share one seeded database (tests/seeded_inbox.py): the compiled one (the default)
and one with GRAPHQL_EXECUTOR=reference, which runs every operation on graphql-core. Each
document goes over HTTP to both, with the same token, and the answers must be the same JSON:
`data` as text (field order is part of a GraphQL response), `errors` as a list in any order
(graphql-core orders them by when concurrent resolvers fail), without `extensions.requestId`.

hypothesis-graphql generates valid queries from our schema; the test rewrites them with
aliases (the same field twice with other arguments), named and inline fragments (the same field
merged from two of them), arguments moved into variables, `@skip`/`@include`, `__typename`, and
arguments biased to the seeded ids and cursors and to what fails (unknown ids, garbage cursors,
page sizes out of range), so resolver errors and null propagation happen. Each document with
conditions runs again with them flipped, which a new plan serves. /metrics shows the compiled
app ran every one of them on its plan.
"""

import dataclasses
import itertools
import json
import re
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import httpx
import hypothesis_graphql
import pytest
from graphql import (
    DocumentNode,
    FieldNode,
    GraphQLArgument,
    GraphQLObjectType,
    GraphQLSchema,
    OperationDefinitionNode,
    SelectionNode,
    ast_from_value,
    build_schema,
    get_introspection_query,
    get_named_type,
    is_non_null_type,
    is_object_type,
    parse,
    print_ast,
    value_from_ast,
)
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette

from gql.app import create_app
from gql.schema import schema_sdl
from gql.settings import Settings
from tests.conftest import PROJECT_ROOT, GraphQLClient, token_for
from tests.seeded_inbox import LEAD_ID, SHEENA, SeededInbox, seed_inbox

MAX_DEPTH = 10  # MAX_QUERY_DEPTH's default (gql/limits.py)
EXAMPLES = 300
COMPILED = "wa_inbox_graphql_compiled_executions_total"
REFERENCE = "wa_inbox_graphql_reference_executions_total"


# --- two apps, one database ------------------------------------------------------------------


@pytest.fixture
async def reference_app(settings: Settings) -> AsyncIterator[Starlette]:
    application = create_app(dataclasses.replace(settings, graphql_executor="reference"))
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def reference_http(reference_app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=reference_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


@dataclass
class Executions:
    """/metrics' execution counters of one app."""

    compiled: int
    reference: int


async def executions(http: httpx.AsyncClient) -> Executions:
    text = (await http.get("/metrics")).text

    def counter(name: str) -> int:
        found = re.search(rf"^{name} (\d+)$", text, re.MULTILINE)
        assert found, f"/metrics has no {name}:\n{text}"
        return int(found.group(1))

    return Executions(compiled=counter(COMPILED), reference=counter(REFERENCE))


def comparable(response: httpx.Response, masked: frozenset[str] = frozenset()) -> Any:
    """What must be equal: the status, the body's keys, `data` as text, `errors` in any order.

    `masked` keys (times the write sets to now, which differ between two runs) compare by
    presence only."""
    body = response.json()
    errors = []
    for error in body.get("errors") or ():
        extensions = {k: v for k, v in error.get("extensions", {}).items() if k != "requestId"}
        errors.append(json.dumps({**error, "extensions": extensions}, sort_keys=True))
    data = _masked(body.get("data", "<no data entry>"), masked)
    return response.status_code, list(body), json.dumps(data), sorted(errors)


def _masked(value: Any, keys: frozenset[str]) -> Any:
    if isinstance(value, dict):
        return {
            key: ("<set>" if item is not None else None) if key in keys else _masked(item, keys)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_masked(item, keys) for item in value]
    return value


def disagreement(
    document: str,
    variables: dict[str, Any] | None,
    compiled: httpx.Response,
    reference: httpx.Response,
) -> str:
    def shown(response: httpx.Response) -> str:
        return f"status {response.status_code}\n{json.dumps(response.json(), indent=2)}"

    return (
        f"the executors disagree on\n{document}\nvariables: {json.dumps(variables)}\n"
        f"--- compiled:\n{shown(compiled)}\n--- reference (graphql-core):\n{shown(reference)}"
    )


@dataclass
class TwoExecutors:
    """Sends each document to the compiled app and to the reference app, as business 1."""

    compiled: httpx.AsyncClient
    reference: httpx.AsyncClient
    headers: dict[str, str] = field(
        default_factory=lambda: {"Authorization": f"Bearer {token_for(1)}"}
    )

    async def post(
        self, http: httpx.AsyncClient, document: str, variables: dict[str, Any] | None
    ) -> httpx.Response:
        try:
            return await http.post(
                "/graphql", json={"query": document, "variables": variables}, headers=self.headers
            )
        except Exception as raised:  # the app crashed: say on what
            app = "compiled" if http is self.compiled else "reference"
            raise AssertionError(
                f"the {app} app raised {raised!r} on\n{document}\n"
                f"variables: {json.dumps(variables)}"
            ) from raised

    async def same_answer(
        self,
        document: str,
        variables: dict[str, Any] | None = None,
        *,
        masked: frozenset[str] = frozenset(),
    ) -> dict[str, Any]:
        """The compiled app's body, after checking the reference app answered the same.

        Both apps get the document in turn, never at once: a mutation's effects are then
        seen by the next one in the same order on each run."""
        compiled = await self.post(self.compiled, document, variables)
        reference = await self.post(self.reference, document, variables)
        expected = comparable(compiled, masked)
        if expected != comparable(reference, masked):
            # graphql-core drops an error whose position an earlier error nulled: which came
            # first may depend on timing. An answer graphql-core also gives is graphql-core's.
            again = await self.post(self.reference, document, variables)
            assert expected == comparable(again, masked), disagreement(
                document, variables, compiled, reference
            )
        body: dict[str, Any] = compiled.json()
        return body


@pytest.fixture
def executors(http: httpx.AsyncClient, reference_http: httpx.AsyncClient) -> TwoExecutors:
    return TwoExecutors(http, reference_http)


@pytest.fixture
async def seeded(http: httpx.AsyncClient, client: GraphQLClient) -> SeededInbox:
    return await seed_inbox(client, http)


# --- generated documents -----------------------------------------------------------------------


@cache
def sdl() -> str:
    return schema_sdl()


@cache
def schema() -> GraphQLSchema:
    return build_schema(sdl())


@cache
def generated_queries() -> st.SearchStrategy[DocumentNode]:
    strategy: st.SearchStrategy[DocumentNode] = hypothesis_graphql.queries(
        sdl(), print_ast=lambda node: node
    )
    return strategy


@dataclass
class GeneratedDocument:
    text: str
    variables: dict[str, Any]
    # The same document with every @skip/@include variable flipped; None without any.
    flipped: dict[str, Any] | None


def phone_spellings(e164: str) -> list[str]:
    """`e164` as people write it: the server normalizes any of them (default region US)."""
    digits = e164.removeprefix("+")
    spellings = [e164, digits, f"+{digits[:-7]} {digits[-7:-4]}-{digits[-4:]}"]
    if e164.startswith("+1"):
        spellings.append(f"({digits[1:4]}) {digits[4:7]}-{digits[7:]}")
    return spellings


def argument_values(seeded: SeededInbox) -> dict[tuple[str, str, str], st.SearchStrategy[Any]]:
    """Values for the arguments of each (type, field, argument): seeded names that find rows,
    and names and page sizes that fail in the resolvers."""
    unknown_ids = st.sampled_from(
        ["999999", "0", "-1", "abc", "", " 1", "1.5", "99999999999999999999", "2147483648"]
    )
    thread_ids = st.sampled_from(
        [*seeded.thread_ids, seeded.merged_thread_id, seeded.foreign_thread_id]
    )
    message_ids = st.sampled_from([*seeded.message_ids, seeded.foreign_message_id])
    phones = st.sampled_from(
        [spelling for phone in seeded.phones if phone for spelling in phone_spellings(phone)]
    )
    bad_phones = st.sampled_from(["+19998887777", "not a phone", "123", "", "+999"])
    page_sizes = st.one_of(
        st.sampled_from([1, 2, 3, 5, 20, 100]), st.sampled_from([1, 2, 3, 5, 20, 100, 0, 101])
    )
    bad_page_sizes = st.sampled_from([-1, 500])
    garbage_cursors = st.sampled_from(["garbage", "", "bm90IGEgY3Vyc29y", "MTA=", "e30=", "-1"])
    thread_cursors = st.sampled_from(seeded.thread_cursors)
    message_cursors = st.sampled_from(seeded.message_cursors)
    return {
        ("Query", "thread", "id"): st.one_of(thread_ids, thread_ids, unknown_ids),
        ("Query", "thread", "phone"): st.one_of(phones, phones, bad_phones),
        ("Query", "thread", "leadId"): st.sampled_from([*seeded.lead_ids, "404", " ", "x"]),
        ("Query", "message", "id"): st.one_of(message_ids, message_ids, unknown_ids),
        # threads is non-null: its errors null the whole answer, so they are rarer.
        ("Query", "threads", "first"): st.one_of(
            page_sizes, page_sizes, page_sizes, bad_page_sizes
        ),
        ("Query", "threads", "after"): st.one_of(
            thread_cursors, thread_cursors, thread_cursors, message_cursors, garbage_cursors
        ),
        ("Query", "threads", "unreadOnly"): st.booleans(),
        ("Thread", "messages", "first"): st.one_of(page_sizes, bad_page_sizes),
        ("Thread", "messages", "last"): st.one_of(page_sizes, bad_page_sizes),
        ("Thread", "messages", "after"): st.one_of(
            message_cursors, message_cursors, thread_cursors, garbage_cursors
        ),
        ("Thread", "messages", "before"): st.one_of(
            message_cursors, message_cursors, thread_cursors, garbage_cursors
        ),
    }


# Which arguments a field is given together, where that decides what its resolver does.
ARGUMENT_SHAPES: dict[tuple[str, str], list[tuple[str, ...]]] = {
    ("Query", "thread"): [("id",), ("id",), ("phone",), ("leadId",), (), ("id", "phone")],
    ("Thread", "messages"): [
        ("first",),
        ("last",),
        ("first", "after"),
        ("last", "before"),
        (),
        ("after",),
        ("before",),
        ("first", "last"),
        ("first", "after", "before"),
    ],
}


def chance(draw: Callable[..., Any], one_in: int) -> bool:
    return bool(draw(st.integers(1, one_in)) == 1)


class DocumentRewriter:
    """Rewrites a generated query into one with every feature the executors must agree on."""

    MAX_ALIASES = 15  # under MAX_QUERY_ALIASES (30), with room for repeated fragment spreads

    def __init__(
        self,
        draw: Callable[..., Any],
        schema: GraphQLSchema,
        values: dict[tuple[str, str, str], st.SearchStrategy[Any]],
    ) -> None:
        self.draw = draw
        self.schema = schema
        self.values = values
        self.definitions: list[str] = []
        self.variables: dict[str, Any] = {}
        self.conditions: dict[str, bool] = {}  # @skip/@include variable -> its value
        self.fragments: list[str] = []
        self.aliases = 0
        self.numbers = itertools.count(1)
        self.depth = 0  # of the selection set being rewritten

    def document(self, generated: DocumentNode) -> GeneratedDocument:
        (operation,) = generated.definitions
        assert isinstance(operation, OperationDefinitionNode)
        query_type = self.schema.query_type
        assert query_type is not None
        body = self.selection_set(query_type, operation.selection_set.selections)
        name = f" Generated{next(self.numbers)}" if chance(self.draw, 2) else ""
        definitions = f"({', '.join(self.definitions)})" if self.definitions else ""
        text = "\n".join([f"query{name}{definitions} {body}", *self.fragments])
        flipped = None
        if self.conditions:
            flipped = {**self.variables}
            flipped.update({name: not value for name, value in self.conditions.items()})
        return GeneratedDocument(text, self.variables, flipped)

    def name(self, prefix: str) -> str:
        return f"{prefix}{next(self.numbers)}"

    def selection_set(self, parent: GraphQLObjectType, nodes: Sequence[SelectionNode]) -> str:
        return "{ " + " ".join(self.grouped(parent, self.selections(parent, nodes))) + " }"

    def selections(self, parent: GraphQLObjectType, nodes: Sequence[SelectionNode]) -> list[str]:
        nodes = [*nodes, *self.connections(parent, nodes)]
        items: list[str] = []
        for node in nodes:
            assert isinstance(node, FieldNode), node
            items.extend(self.fields(parent, node))
        if chance(self.draw, 3):
            items.insert(self.draw(st.integers(0, len(items))), self.typename())
        return items

    def connections(
        self, parent: GraphQLObjectType, nodes: Sequence[SelectionNode]
    ) -> list[FieldNode]:
        """A page of threads or of a thread's messages, which generated documents seldom hold
        (hypothesis-graphql picks fields evenly), as a field to rewrite like the others."""
        field_name = {"Query": "threads", "Thread": "messages"}.get(parent.name)
        present = {node.name.value for node in nodes if isinstance(node, FieldNode)}
        # The connection, its edges and their node: three levels, then the node's fields.
        room = MAX_DEPTH - self.depth - 3
        if field_name is None or field_name in present or room < 1 or not chance(self.draw, 2):
            return []
        node_type = self.schema.get_type("Thread" if field_name == "threads" else "Message")
        assert isinstance(node_type, GraphQLObjectType)
        edge = self.draw(st.sampled_from(["cursor node", "node", "cursor node", "cursor"]))
        edges = edge.replace("node", f"node {self.object_selection(node_type, room)}")
        page_info = self.draw(
            st.lists(
                st.sampled_from(["hasNextPage", "hasPreviousPage", "startCursor", "endCursor"]),
                max_size=4,
                unique=True,
            )
        )
        info = f" pageInfo {{ {' '.join(page_info)} }}" if page_info else ""
        (operation,) = parse(f"{{ {field_name} {{ edges {{ {edges} }}{info} }} }}").definitions
        assert isinstance(operation, OperationDefinitionNode)
        (field_node,) = operation.selection_set.selections
        assert isinstance(field_node, FieldNode)
        return [field_node]

    def object_selection(self, object_type: GraphQLObjectType, room: int) -> str:
        """A few fields of `object_type`, `room` levels deep at most."""
        names = self.draw(
            st.lists(
                st.sampled_from(sorted(object_type.fields)), min_size=1, max_size=6, unique=True
            )
        )
        parts = []
        for name in names:
            named = get_named_type(object_type.fields[name].type)
            if not isinstance(named, GraphQLObjectType):
                parts.append(name)
            elif room > 1 and name != "messages":  # messages: added by `connections`
                parts.append(f"{name} {self.object_selection(named, room - 1)}")
        return "{ " + " ".join(parts or ["__typename"]) + " }"

    def typename(self) -> str:
        if self.aliases < self.MAX_ALIASES and chance(self.draw, 4):
            self.aliases += 1
            return f"{self.name('kind')}: __typename"
        return "__typename"

    def grouped(self, parent: GraphQLObjectType, items: list[str]) -> list[str]:
        """`items` with some moved into inline fragments and named fragments."""
        groups = self.draw(
            st.lists(st.sampled_from([0, 0, 0, 1, 2]), min_size=len(items), max_size=len(items))
        )
        out: list[str | list[str]] = []
        members: dict[int, list[str]] = {}
        for item, group in zip(items, groups, strict=True):
            if group == 0:
                out.append(item)
            elif group in members:
                members[group].append(item)
            else:
                members[group] = [item]
                out.append(members[group])
        return [item if isinstance(item, str) else self.fragment(parent, item) for item in out]

    def fragment(self, parent: GraphQLObjectType, items: list[str]) -> str:
        body = "{ " + " ".join(items) + " }"
        directives = self.directives()
        how = self.draw(st.sampled_from(["inline", "typed inline", "named"]))
        if how == "inline":
            return f"...{directives} {body}"
        if how == "typed inline":
            return f"... on {parent.name}{directives} {body}"
        name = self.name("Part")
        self.fragments.append(f"fragment {name} on {parent.name} {body}")
        return f"...{name}{directives}"

    def directives(self) -> str:
        if not chance(self.draw, 4):
            return ""
        directive = self.draw(st.sampled_from(["skip", "include"]))
        how = self.draw(st.sampled_from(["variable", "variable", "defaulted", "literal"]))
        value = self.draw(st.booleans())
        if how == "literal":
            return f" @{directive}(if: {str(value).lower()})"
        name = self.name("show")
        if how == "defaulted":
            self.definitions.append(f"${name}: Boolean = {str(value).lower()}")
        else:
            self.definitions.append(f"${name}: Boolean!")
            self.variables[name] = value
        self.conditions[name] = value
        return f" @{directive}(if: ${name})"

    def fields(self, parent: GraphQLObjectType, node: FieldNode) -> list[str]:
        name = node.name.value
        if name == "__typename":
            return [self.typename()]
        definition = parent.fields[name]
        alias = None
        if self.aliases < self.MAX_ALIASES and chance(self.draw, 5):
            self.aliases += 1
            alias = self.name(name)
        items = self.field(parent, name, node, alias)
        if definition.args and self.aliases < self.MAX_ALIASES and chance(self.draw, 4):
            # The same field under another alias, with other arguments.
            self.aliases += 1
            items.extend(self.field(parent, name, node, self.name(name)))
        return items

    def field(
        self, parent: GraphQLObjectType, name: str, node: FieldNode, alias: str | None
    ) -> list[str]:
        """The field, and maybe a copy under the same response key that graphql-core merges
        with it: the same arguments, part of its selection, inside an inline fragment."""
        definition = parent.fields[name]
        arguments = self.arguments(parent.name, name, definition.args, node)
        head = f"{alias}: {name}{arguments}" if alias else f"{name}{arguments}"
        named = get_named_type(definition.type)
        if not is_object_type(named) or node.selection_set is None:
            return [f"{head}{self.directives()}"]
        assert isinstance(named, GraphQLObjectType)
        self.depth += 1
        selected = self.selections(named, node.selection_set.selections)
        self.depth -= 1
        text = f"{head}{self.directives()} {{ {' '.join(self.grouped(named, selected))} }}"
        if not chance(self.draw, 6):
            return [text]
        part = self.draw(st.lists(st.sampled_from(selected), min_size=1, max_size=3, unique=True))
        merged = f"{head}{self.directives()} {{ {' '.join(part)} }}"
        return [text, f"...{self.directives()} {{ {merged} }}"]

    def arguments(
        self,
        parent: str,
        field_name: str,
        definitions: dict[str, GraphQLArgument],
        node: FieldNode,
    ) -> str:
        generated = {argument.name.value: argument.value for argument in node.arguments or ()}
        shapes = ARGUMENT_SHAPES.get((parent, field_name))
        shape = self.draw(st.sampled_from(shapes)) if shapes else tuple(definitions)
        parts = []
        for name, argument in definitions.items():
            choices = ["biased", "biased", "biased"]
            if name in generated:
                choices.append("generated")
            if not is_non_null_type(argument.type):
                choices.extend(["absent", "null"] if shapes is None else ["null"])
                if name not in shape:
                    choices = ["absent"]
            choice = self.draw(st.sampled_from(choices))
            strategy = self.values.get((parent, field_name, name))
            if choice == "biased" and strategy is None:
                choice = "generated" if name in generated else "absent"
            if choice == "absent":
                continue
            if choice == "generated":
                value = value_from_ast(generated[name], argument.type)
            elif choice == "null":
                value = None
            else:
                value = self.draw(strategy)
            parts.append(f"{name}: {self.value(argument, value)}")
        return f"({', '.join(parts)})" if parts else ""

    def value(self, argument: GraphQLArgument, value: Any) -> str:
        """`value` as a literal, or as a variable (given, defaulted, or left unset)."""
        literal = print_ast(ast_from_value(value, argument.type))  # type: ignore[arg-type]
        how = self.draw(st.sampled_from(["literal", "variable", "variable", "defaulted", "unset"]))
        nullable = not is_non_null_type(argument.type)
        if how == "literal":
            return literal
        name = self.name("v")
        if how == "unset" and nullable:
            # Never given: the argument is as if absent (its default applies).
            self.definitions.append(f"${name}: {argument.type}")
        elif how == "defaulted" and value is not None:
            self.definitions.append(f"${name}: {argument.type} = {literal}")
        else:
            strict = value is not None and nullable and chance(self.draw, 3)
            self.definitions.append(f"${name}: {argument.type}{'!' if strict else ''}")
            self.variables[name] = value
        return f"${name}"


@st.composite
def documents(draw: Callable[..., Any], seeded: SeededInbox) -> GeneratedDocument:
    generated = draw(generated_queries())
    return DocumentRewriter(draw, schema(), argument_values(seeded)).document(generated)


@dataclass
class Tally:
    """How the generated documents fared over all examples."""

    runs: int = 0
    executed: int = 0
    with_errors: int = 0
    refused: list[str] = field(default_factory=list, repr=False)
    failed: bool = False  # then that failure is the one to read, not the counts


@pytest.fixture
def tally() -> Iterator[Tally]:
    counted = Tally()
    yield counted
    if counted.failed:
        return
    # Checked after the last example: most documents must execute, not stop at validation.
    print(
        f"generated documents: {counted.runs} runs, {counted.executed} executed "
        f"({counted.with_errors} with errors), {len(counted.refused)} refused"
    )
    assert counted.executed >= 0.8 * counted.runs, counted.refused[:5]
    assert counted.with_errors >= 0.1 * counted.runs, "resolver errors are too rare to prove much"


@settings(
    max_examples=EXAMPLES,
    # Shrinking replays HTTP round trips for many minutes; the failure shows the document.
    phases=[Phase.explicit, Phase.generate],
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(data=st.data())
async def test_generated_queries_get_the_same_answer_from_both_executors(
    data: st.DataObject,
    seeded: SeededInbox,
    executors: TwoExecutors,
    http: httpx.AsyncClient,
    tally: Tally,
) -> None:
    document = data.draw(documents(seeded), label="document")
    try:
        await run_on_both(document, executors, http, tally)
    except BaseException:
        tally.failed = True
        raise


async def run_on_both(
    document: GeneratedDocument, executors: TwoExecutors, http: httpx.AsyncClient, tally: Tally
) -> None:
    """The document on both apps (again with its conditions flipped), each run on a plan."""
    runs = [document.variables] + ([document.flipped] if document.flipped is not None else [])
    before = await executions(http)
    executed = 0
    for variables in runs:
        body = await executors.same_answer(document.text, variables)
        tally.runs += 1
        if "data" in body:
            executed += 1
            tally.with_errors += "errors" in body
        else:
            tally.refused.append(f"{document.text}\n{body['errors']}")
    tally.executed += executed
    after = await executions(http)
    assert (after.compiled - before.compiled, after.reference - before.reference) == (
        executed,
        0,
    ), f"not every execution ran on its plan:\n{document.text}"


# --- hand-written documents ----------------------------------------------------------------


def readme_examples() -> list[str]:
    """The queries and mutations of the README's "Try it in GraphiQL" section."""
    readme = (PROJECT_ROOT / "README.md").read_text()
    section = readme.split("## Try it in GraphiQL", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```graphql\n(.*?)```", section, re.DOTALL)
    examples = [block for block in blocks if not block.lstrip().startswith("subscription")]
    assert len(examples) >= 4, examples
    return examples


# The inbox page as a codegen'd front end asks for it: fragments, variables, the badge.
INBOX_PAGE = """
query InboxPage($first: Int!, $after: String, $unreadOnly: Boolean = false) {
  unreadCount
  threads(first: $first, after: $after, unreadOnly: $unreadOnly) {
    edges { cursor node { ...ThreadRow } }
    pageInfo { hasNextPage endCursor }
  }
}
fragment ThreadRow on Thread {
  __typename id canonicalKey phone leadId status contactName userId unreadCount lastMessageAt
  lastReadAt phones
  lastMessage { ...MessageBubble }
}
fragment MessageBubble on Message {
  __typename id threadId direction source status body type sentAt editedAt forwarded
  deliveryError { code title }
  replyTo { id body direction }
}
"""
THREAD_PAGE = """
query ThreadPage($id: ID!, $before: String) {
  thread(id: $id) {
    id phone status unreadCount
    messages(last: 50, before: $before) {
      edges { cursor node {
        id threadId direction source status body providerMessageId sentAt createdAt type
        mediaId providerPayload replyToProviderId forwarded editedAt originalBody
        deliveryError { code title }
        referral { sourceUrl sourceType sourceId headline body mediaType imageUrl videoUrl
                   thumbnailUrl ctwaClid }
        replyTo { id body replyTo { id } thread { id } }
      } }
      pageInfo { hasPreviousPage hasNextPage startCursor endCursor }
    }
  }
}
"""
MARK_READ = """
mutation Read($threadId: ID, $phone: String) {
  markRead(threadId: $threadId, phone: $phone) {
    totalUnread
    thread { __typename id unreadCount lastReadAt lastMessage { id body } }
  }
}
"""
SET_THREAD_STATUS = """
mutation Close($threadId: ID!, $status: ThreadStatus!) {
  closed: setThreadStatus(threadId: $threadId, status: $status) { id status ...Badge }
}
fragment Badge on Thread { unreadCount messages(first: 2) { edges { node { id } } } }
"""
LINK_LEAD = """
mutation Link($threadId: ID, $phone: String, $leadId: ID!) {
  linkLead(threadId: $threadId, phone: $phone, leadId: $leadId) {
    id canonicalKey phone leadId phones unreadCount
  }
}
"""


async def run_twice_and_compare(
    executors: TwoExecutors, document: str, variables: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A mutation run once on each app (the first run may change what the second sees), then
    compared on a second run of each. markRead moves lastReadAt to now: compared as set."""
    await executors.post(executors.compiled, document, variables)
    await executors.post(executors.reference, document, variables)
    return await executors.same_answer(document, variables, masked=frozenset({"lastReadAt"}))


async def test_readme_examples_and_inbox_pages_get_the_same_answer_from_both_executors(
    seeded: SeededInbox, executors: TwoExecutors, http: httpx.AsyncClient
) -> None:
    before = await executions(http)
    sent = 0
    for example in readme_examples():
        if example.lstrip().startswith("mutation"):
            body = await run_twice_and_compare(executors, example)
            sent += 2
        else:
            body = await executors.same_answer(example)
            sent += 1
        assert "errors" not in body, (example, body)

    page = await executors.same_answer(INBOX_PAGE, {"first": 2})
    cursor = page["data"]["threads"]["pageInfo"]["endCursor"]
    await executors.same_answer(INBOX_PAGE, {"first": 50, "after": cursor})
    await executors.same_answer(INBOX_PAGE, {"first": 50, "unreadOnly": True})
    await executors.same_answer(INBOX_PAGE, {"first": 50, "after": "garbage"})
    sent += 4
    for thread_id in [*seeded.thread_ids, seeded.merged_thread_id, seeded.foreign_thread_id]:
        thread = await executors.same_answer(THREAD_PAGE, {"id": thread_id})
        start = (thread["data"]["thread"] or {}).get("messages", {}).get("pageInfo", {})
        await executors.same_answer(
            THREAD_PAGE, {"id": thread_id, "before": start.get("startCursor") or "bad"}
        )
        sent += 2
    after = await executions(http)
    assert (after.compiled - before.compiled, after.reference - before.reference) == (sent, 0)


async def test_mutation_results_get_the_same_answer_from_both_executors(
    seeded: SeededInbox, executors: TwoExecutors, http: httpx.AsyncClient
) -> None:
    read, close, link = MARK_READ, SET_THREAD_STATUS, LINK_LEAD
    named = await executors.same_answer(
        "query($lead: ID) { thread(leadId: $lead) { id } }", {"lead": LEAD_ID}
    )
    lead_thread = named["data"]["thread"]["id"]
    cases: list[tuple[str, dict[str, Any]]] = [
        (read, {"threadId": seeded.thread_ids[0]}),
        (read, {"phone": SHEENA}),
        (read, {"threadId": seeded.merged_thread_id}),
        (read, {"threadId": "999999"}),
        (read, {"threadId": "abc"}),
        (read, {}),
        (close, {"threadId": seeded.thread_ids[1], "status": "CLOSED"}),
        (close, {"threadId": seeded.thread_ids[1], "status": "OPEN"}),
        (close, {"threadId": seeded.foreign_thread_id, "status": "CLOSED"}),
        (link, {"threadId": lead_thread, "leadId": LEAD_ID}),
        (link, {"threadId": seeded.merged_thread_id, "leadId": LEAD_ID}),
        (link, {"threadId": lead_thread, "leadId": "88"}),  # CONFLICT: another lead's
        (link, {"phone": "+19998887777", "leadId": "99"}),  # NOT_FOUND
        # Serial root fields: the second fails (non-null), so data is null and the third
        # never runs.
        (
            f"""
            mutation {{
              first: markRead(threadId: "{seeded.thread_ids[0]}") {{ totalUnread }}
              second: markRead(threadId: "999999") {{ totalUnread }}
              third: setThreadStatus(threadId: "{seeded.thread_ids[0]}", status: CLOSED) {{ id }}
            }}
            """,
            {},
        ),
        # An error inside a mutation's result: messages(first: 500) is refused, and its
        # null climbs to markRead's non-null result.
        (
            f"""
            mutation {{
              markRead(threadId: "{seeded.thread_ids[0]}") {{
                totalUnread thread {{ id messages(first: 500) {{ edges {{ cursor }} }} }}
              }}
            }}
            """,
            {},
        ),
    ]
    before = await executions(http)
    for document, variables in cases:
        await run_twice_and_compare(executors, document, variables)
    after = await executions(http)
    assert (after.compiled - before.compiled, after.reference - before.reference) == (
        2 * len(cases),
        0,
    )


async def test_introspection_runs_on_graphql_core_in_both_apps_and_answers_alike(
    seeded: SeededInbox, executors: TwoExecutors, http: httpx.AsyncClient
) -> None:
    before = await executions(http)
    introspection = await executors.same_answer(get_introspection_query(descriptions=True))
    assert "errors" not in introspection
    await executors.same_answer('{ __type(name: "Thread") { name fields { name } } __typename }')
    after = await executions(http)
    assert (after.compiled - before.compiled, after.reference - before.reference) == (0, 2)


async def test_a_condition_variable_sent_as_null_is_a_request_error_on_both_executors(
    seeded: SeededInbox, executors: TwoExecutors
) -> None:
    """Collecting the fields fails (`if:` is a non-null Boolean): no plan, graphql-core answers
    with the error, and nothing is a 500."""
    document = (
        "query($v: Boolean = true) { threads(first: 1) @include(if: $v) { edges { cursor } } }"
    )
    answer = await executors.same_answer(document, {"v": None})
    assert "Argument 'if' has invalid value" in answer["errors"][0]["message"]
