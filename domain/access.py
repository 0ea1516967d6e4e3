"""Who may do what within a business: the roles a token can carry and what each allows.

- agent (the default, least privilege): read threads, mark them read, record and send HUMAN
  messages, delete messages, close and reopen threads.
- service (bots and automations): read threads, ingest and send messages of any business
  source, link leads.
- admin: everything of its business, including its WhatsApp channels.
"""

from enum import Enum

from domain.errors import Forbidden
from domain.models import Source


class Role(Enum):
    AGENT = "agent"
    SERVICE = "service"
    ADMIN = "admin"


DEFAULT_ROLE = Role.AGENT


def require_may_ingest(role: Role, source: Source) -> None:
    if role is Role.AGENT and source is not Source.HUMAN:
        raise Forbidden(
            "an agent records HUMAN messages only; bots and automations need a service token"
        )


def require_may_send(role: Role, source: Source) -> None:
    """Agents reply as themselves (HUMAN); bots and automations send with service tokens."""
    if source is Source.CUSTOMER:
        raise Forbidden("the inbox sends as the business, never as the customer")
    if role is Role.AGENT and source is not Source.HUMAN:
        raise Forbidden(
            "an agent sends HUMAN messages only; bots and automations need a service token"
        )


def require_may_mark_read(role: Role) -> None:
    if role is Role.SERVICE:
        raise Forbidden("marking threads read is for agents and admins")


def require_may_change_threads(role: Role) -> None:
    """Deleting messages and closing or reopening threads: agents' and admins' work."""
    if role is Role.SERVICE:
        raise Forbidden("deleting messages and changing thread status is for agents and admins")


def require_may_link_leads(role: Role) -> None:
    """Which lead a customer is comes from the CRM's side: its service tokens, or an admin."""
    if role is Role.AGENT:
        raise Forbidden("linking leads is for service (CRM) and admin tokens")


def require_may_manage_channels(role: Role) -> None:
    if role is not Role.ADMIN:
        raise Forbidden("WhatsApp channels are managed with an admin token")
