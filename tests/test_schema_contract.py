"""The schema is a contract: schema.graphql equals what the code serves, and it holds every
name of the contract the front ends and code generators were promised."""

from graphql import (
    GraphQLEnumType,
    GraphQLInputObjectType,
    GraphQLObjectType,
    build_schema,
)

from gql.schema import schema_sdl
from tests.conftest import PROJECT_ROOT

# The contract from the core issue, verbatim: every type, field, argument and default here
# must exist with the same type in the served schema.
CONTRACT = """
scalar DateTime
enum MessageDirection { INBOUND OUTBOUND }
enum MessageSource { CUSTOMER BOT AUTOMATION HUMAN }
enum MessageStatus { RECEIVED PENDING SENT DELIVERED READ PLAYED FAILED DELETED }
enum ThreadStatus { OPEN CLOSED }
type Message { id: ID!  threadId: ID!  thread: Thread!  direction: MessageDirection!
  source: MessageSource!  status: MessageStatus!  body: String  providerMessageId: String
  sentAt: DateTime!  createdAt: DateTime! }
type Thread { id: ID!  canonicalKey: String!  phone: String  leadId: ID  status: ThreadStatus!
  startedAt: DateTime!  lastMessageAt: DateTime  lastReadAt: DateTime  unreadCount: Int!
  lastMessage: Message
  messages(first: Int, after: String, last: Int, before: String): MessageConnection! }
type PageInfo { hasNextPage: Boolean!  hasPreviousPage: Boolean!  startCursor: String
  endCursor: String }
type MessageEdge { node: Message!  cursor: String! }
type MessageConnection { edges: [MessageEdge!]!  pageInfo: PageInfo! }
type ThreadEdge { node: Thread!  cursor: String! }
type ThreadConnection { edges: [ThreadEdge!]!  pageInfo: PageInfo! }
input IngestMessageInput { phone: String!  leadId: ID  direction: MessageDirection!
  source: MessageSource!  body: String  providerMessageId: String  sentAt: DateTime
  historical: Boolean = false }
type IngestMessageResult { message: Message!  thread: Thread!  duplicate: Boolean! }
type MarkReadResult { thread: Thread!  totalUnread: Int! }
type Query {
  threads(first: Int = 20, after: String, unreadOnly: Boolean = false): ThreadConnection!
  thread(id: ID, phone: String, leadId: ID): Thread
  message(id: ID!): Message
  unreadCount: Int! }
scalar JSON
type DeliveryError { code: Int  title: String  outcomeUnknown: Boolean! }
type MessageStatusEvent { messageId: ID!  threadId: ID!  status: MessageStatus!
  deliveryError: DeliveryError }
type Mutation {
  ingestMessage(input: IngestMessageInput!): IngestMessageResult!
  markRead(threadId: ID, phone: String): MarkReadResult!
  sendMessage(threadId: ID!, body: String!, replyTo: ID, source: MessageSource): Message!
  sendTemplate(threadId: ID!, name: String!, language: String!, components: JSON,
    source: MessageSource): Message! }
type Subscription { messageStatusChanged(threadId: ID): MessageStatusEvent! }
"""


def test_committed_schema_file_equals_the_served_schema() -> None:
    committed = (PROJECT_ROOT / "schema.graphql").read_text()
    assert committed == schema_sdl(), "schema.graphql is stale: run `make schema`"


def test_served_schema_honours_every_name_and_type_of_the_contract() -> None:
    contract = build_schema(CONTRACT)
    served = build_schema(schema_sdl())
    for name, expected in contract.type_map.items():
        if name.startswith("__"):
            continue
        actual = served.type_map.get(name)
        assert actual is not None, f"type {name} is missing"
        assert type(actual) is type(expected), name
        if isinstance(expected, GraphQLEnumType):
            assert isinstance(actual, GraphQLEnumType)
            assert set(actual.values) == set(expected.values), name
        if isinstance(expected, (GraphQLObjectType, GraphQLInputObjectType)):
            assert isinstance(actual, (GraphQLObjectType, GraphQLInputObjectType))
            for field_name, field in expected.fields.items():
                served_field = actual.fields.get(field_name)
                assert served_field is not None, f"{name}.{field_name} is missing"
                assert str(served_field.type) == str(field.type), f"{name}.{field_name}"
                if isinstance(expected, GraphQLInputObjectType):
                    assert served_field.default_value == field.default_value, field_name
                for arg_name, arg in getattr(field, "args", {}).items():
                    served_arg = served_field.args.get(arg_name)
                    assert served_arg is not None, f"{name}.{field_name}({arg_name}) missing"
                    assert str(served_arg.type) == str(arg.type), f"{field_name}({arg_name})"
                    assert served_arg.default_value == arg.default_value, arg_name
