"""Counters operators read on /metrics: how often the server had to work around trouble."""

from dataclasses import dataclass, fields


@dataclass
class InboxMetrics:
    """Process-wide counters; one instance per application, passed to the domain services."""

    conversation_upsert_failures: int = 0
    serialized_fallbacks: int = 0
    duplicates_skipped: int = 0
    messages_stored: int = 0
    threads_marked_read: int = 0
    live_events_dropped: int = 0
    live_subscribers_lagged: int = 0
    pubsub_publish_failures: int = 0
    pubsub_reconnects: int = 0
    webhook_deliveries: int = 0
    webhook_signature_failures: int = 0
    webhook_malformed_deliveries: int = 0
    webhook_unknown_numbers: int = 0
    webhook_rejected_parts: int = 0
    webhook_storage_failures: int = 0
    # GraphQL operations run on their compiled plan, and on graphql-core (what no plan covers).
    graphql_compiled_executions: int = 0
    graphql_reference_executions: int = 0
    # The sender (gql/sender.py): attempts WhatsApp took, attempts to be repeated, messages
    # failed (final errors, exhausted retries, unknown outcomes), and answers lost.
    sends_accepted: int = 0
    sends_retried: int = 0
    sends_failed: int = 0
    sends_outcome_unknown: int = 0

    def as_dict(self) -> dict[str, int]:
        return {field.name: getattr(self, field.name) for field in fields(self)}
