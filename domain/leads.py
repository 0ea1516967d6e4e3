"""Linking a CRM lead to the customer's thread, for CRMs that learn the lead after the fact.

The same settling of names as for a message (domain/customer_identities.py), without a message:
the thread is re-keyed to the lead in place, or merged with the lead's thread (the lead's thread
survives), and the phone becomes one more name of it. Linking twice changes nothing.
"""

import logging
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from db.unit_of_work import Sessions, run_unit_of_work
from domain.canonical_keys import normalize_lead_id
from domain.customer_identities import (
    CustomerNames,
    SettledThread,
    current_thread_id,
    settle_customer_thread,
)
from domain.errors import BadInput
from domain.events import ThreadMerged
from domain.models import Thread
from domain.phones import normalize_phone

log = logging.getLogger("wa_inbox.leads")


@dataclass(frozen=True)
class LeadLink:
    thread: Thread
    merges: tuple[ThreadMerged, ...]


async def link_lead(
    sessions: Sessions,
    business_id: int,
    *,
    lead_id: str,
    thread_id: int | None,
    phone: str | None,
    default_region: str,
) -> LeadLink:
    """Make `lead_id` (and `phone`) names of the customer's thread, given by id or by phone.

    NOT_FOUND when neither the thread, the phone nor the lead names a thread; CONFLICT when the
    thread or the phone already belongs to another lead.
    """
    lead = normalize_lead_id(lead_id)
    if lead is None:
        raise BadInput("leadId must not be empty")
    if thread_id is None and phone is None:
        raise BadInput("give threadId or phone (or both): the customer the lead is")
    phone_e164 = None if phone is None else normalize_phone(phone, default_region)
    names = CustomerNames(
        business_id, lead_id=lead, phones=() if phone_e164 is None else (phone_e164,)
    )

    async def link(session: AsyncSession) -> SettledThread:
        target = None
        if thread_id is not None:
            # An old link to a thread merged away since names the thread it went into.
            target = await current_thread_id(session, business_id, thread_id)
        return await settle_customer_thread(session, names, touch=None, also_thread_id=target)

    settled = await run_unit_of_work(sessions, link, business_id=business_id)
    thread = Thread.from_row(settled.conversation)
    log.info(
        "[WA-SESSION] lead linked to thread_id=%s for business_id=%s (%d threads merged in)",
        thread.id,
        business_id,
        len(settled.merges),
    )
    return LeadLink(thread, tuple(settled.merges))
