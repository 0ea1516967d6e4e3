"""One value that names a thread by its id or by its customer's phone, as the legacy front end
sends it (`selectedThread.id || selectedThread.phone`, issue 13).

The rule, in order:
- empty (or only spaces): BadInput;
- ASCII digits only, no leading 0, at most 19 digits (a row id): the business's thread with
  that id, or the one it was merged into; when the business has none, the same digits are
  tried as a phone (WhatsApp's `wa_id` spelling, "972507654321");
- anything else is a phone in any format ("+972 50-765-4321", "0507654321", "(415) 555-0100",
  20 digits or more): the thread of that number, BadInput when it is no possible number.

Thread ids win over phones because a thread id is never 0-prefixed and never has a "+", while
phones in the legacy are E.164 ("+972..."): an all-digit phone only collides with an id when
the business has more than 10^10 threads.
"""

from sqlalchemy.ext.asyncio import AsyncSession

from domain.errors import BadInput
from domain.models import Thread
from domain.threads import find_thread_by_id, find_thread_by_phone

_MAX_ROW_ID = 2**63 - 1
_MAX_ROW_ID_DIGITS = len(str(_MAX_ROW_ID))


def thread_id_in(reference: str) -> int | None:
    """The thread id `reference` may be, or None when it can only be a phone."""
    if not (reference.isascii() and reference.isdigit()) or reference.startswith("0"):
        return None
    if len(reference) > _MAX_ROW_ID_DIGITS or int(reference) > _MAX_ROW_ID:
        return None
    return int(reference)


async def find_thread_by_reference(
    session: AsyncSession, business_id: int, reference: str, *, default_region: str
) -> Thread | None:
    """The thread `reference` names by the rule above; None when nothing of the business does."""
    text = reference.strip()
    if not text:
        raise BadInput("name the thread by its id or its customer's phone")
    thread_id = thread_id_in(text)
    if thread_id is None:
        return await find_thread_by_phone(session, business_id, text, default_region)
    found = await find_thread_by_id(session, business_id, thread_id)
    if found is not None:
        return found
    try:
        return await find_thread_by_phone(session, business_id, text, default_region)
    except BadInput:
        # Digits that are neither a thread id of the business nor a possible phone ("999"):
        # the caller most likely sent an id, and no such thread is what it needs to hear.
        return None
