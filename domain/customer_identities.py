"""One customer, one thread, however they are named (issue 11).

A customer has names: a CRM lead id, phones (an earlier number stays a name after a change),
WhatsApp's business-scoped user ids. Each name is a key, `lead:{business}:{id}`,
`phone:{business}:{e164}` or `user:{business}:{id}`, and every key leads to one thread: as the
thread's canonical key, or as an alias of it.

Whenever a message (or `linkLead`) names a customer, all its names are settled at once:
- names that lead nowhere yet become aliases of the customer's thread;
- names that lead to different threads prove those threads are one customer's: they are merged,
  the lead's thread surviving (else the thread with the stronger key, lead > phone > user, else
  the older one);
- the survivor is re-keyed in place to the strongest name: a lead once one is known, the new
  number after a number change, the phone of a thread known by user id only;
- a phone (or user id) already on another lead's thread is a CONFLICT when the message names a
  lead: moving a phone between leads is a CRM merge, not ours to guess.

Writers of a name queue on its advisory lock before they create or link anything, so two
concurrent first messages never create two threads of one customer.
"""

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from sqlalchemy import RowMapping
from sqlalchemy.ext.asyncio import AsyncSession

from db import advisory_locks, identity_links, statements
from db.identity_links import NamedThread
from domain.canonical_keys import canonical_key, user_key
from domain.errors import Conflict, NotFound
from domain.events import ThreadMerged

log = logging.getLogger("wa_inbox.identities")

T = TypeVar("T")

_LEAD, _PHONE, _USER = "lead:", "phone:", "user:"
# After this many times of finding the customer's threads merged away under our feet,
# something is wrong with the data rather than busy.
_MAX_LOOKUPS = 8


def _strength(key: str) -> int:
    """Lead ids name a customer most firmly, then phones, then user ids."""
    for strength, prefix in enumerate((_LEAD, _PHONE, _USER)):
        if key.startswith(prefix):
            return strength
    return len((_LEAD, _PHONE, _USER))


@dataclass(frozen=True)
class CustomerNames:
    """Every name one message (or link) gives its customer; the current ones first."""

    business_id: int
    lead_id: str | None = None
    phones: tuple[str, ...] = ()  # E.164; the first is the number the customer uses now
    user_ids: tuple[str, ...] = ()  # the first is the customer's current user id

    @property
    def keys(self) -> list[str]:
        keys = [] if self.lead_id is None else [self._lead_key]
        keys += [canonical_key(self.business_id, lead_id=None, phone_e164=p) for p in self.phones]
        keys += [user_key(self.business_id, u) for u in self.user_ids]
        return list(dict.fromkeys(keys))

    @property
    def _lead_key(self) -> str:
        return canonical_key(self.business_id, lead_id=self.lead_id, phone_e164=None)

    @property
    def preferred_key(self) -> str:
        """The key a new thread of this customer gets, and a re-keyed one moves to."""
        return self.keys[0]

    @property
    def earlier_keys(self) -> set[str]:
        """Names the customer had before (a number or user id change)."""
        earlier = {
            canonical_key(self.business_id, lead_id=None, phone_e164=p) for p in self.phones[1:]
        }
        return earlier | {user_key(self.business_id, u) for u in self.user_ids[1:]}


@dataclass(frozen=True)
class ThreadTouch:
    """What a new message changes on its thread (and its seq, taken with it)."""

    message_at: datetime
    reopen: bool
    contact: statements.ContactDetails
    unread_delta: int
    # The customer wrote from the message's phone: it becomes the thread's phone. Messages to
    # the customer (a bot using an earlier number) only fill a missing one.
    from_customer: bool = True
    serialized: bool = False  # the fallback for a missing unique constraint


@dataclass
class SettledThread:
    """The customer's thread after their names were settled, and the merges that took."""

    conversation: RowMapping
    merges: list[ThreadMerged] = field(default_factory=list)


async def settle_customer_thread(
    session: AsyncSession,
    names: CustomerNames,
    *,
    touch: ThreadTouch | None,
    also_thread_id: int | None = None,
) -> SettledThread:
    """The one thread all of `names` (and `also_thread_id`) lead to, after linking them.

    With `touch`, a message is being stored: the thread is created when no name leads
    anywhere, and touched (next seq taken, counters moved) under its row lock. Without it,
    names are only linked (`linkLead`), and a customer with no thread is NOT_FOUND.
    Conflict when the names belong to two different leads and a lead is named.
    """
    business_id = names.business_id
    keys = names.keys
    if touch is not None and also_thread_id is None:
        named = await identity_links.threads_named(session, business_id, keys)
        settled = await _touch_when_settled(session, names, named, touch)
        if settled is not None:
            return settled
    # Something must be created or linked: queue behind every writer of these names, then
    # look again (what we read may have changed before we got the locks).
    await advisory_locks.lock_many(
        session, business_id, ((advisory_locks.CUSTOMER_NAMES, key) for key in keys)
    )
    for _ in range(_MAX_LOOKUPS):
        named = await identity_links.threads_named(session, business_id, keys)
        thread_ids = {thread.conversation_id for thread in named.values()}
        if also_thread_id is not None:
            thread_ids.add(also_thread_id)
        if not thread_ids:
            if touch is None:
                raise NotFound("no thread for that phone or lead")
            return SettledThread(await _create(session, names, touch))
        locked = await identity_links.lock_conversations(session, business_id, sorted(thread_ids))
        if also_thread_id is not None and also_thread_id not in locked:
            raise NotFound("no thread with that id")
        if locked.keys() != thread_ids:
            continue  # merged away since we looked: look again
        return await _link(session, names, named, locked, touch)
    raise RuntimeError(f"the threads of {keys} kept being merged away")


async def _touch_when_settled(
    session: AsyncSession,
    names: CustomerNames,
    named: dict[str, NamedThread],
    touch: ThreadTouch,
) -> SettledThread | None:
    """The common case in two statements: every name already leads to one thread that needs
    no re-keying. None when anything must be created or linked (or the thread just went)."""
    thread_ids = {thread.conversation_id for thread in named.values()}
    if len(thread_ids) != 1 or named.keys() != set(names.keys):
        return None
    thread = next(iter(named.values()))
    if _rekey_target(names, thread.canonical_key) is not None:
        return None
    touched = await _touch(session, thread.conversation_id, names, touch)
    if touched is None:
        return None  # merged away meanwhile
    # Checked on the locked row, so a lead set by a link that committed meanwhile counts too;
    # a refusal rolls the touch back with the unit of work.
    _refuse_another_lead(names, {touched["lead_id"]})
    return SettledThread(touched)


async def _create(session: AsyncSession, names: CustomerNames, touch: ThreadTouch) -> RowMapping:
    upsert = (
        statements.upsert_conversation_serialized
        if touch.serialized
        else statements.upsert_conversation
    )
    created = await upsert(
        session,
        business_id=names.business_id,
        canonical_key=names.preferred_key,
        phone_e164=names.phones[0] if names.phones else None,
        lead_id=names.lead_id,
        message_at=touch.message_at,
        reopen=touch.reopen,
        contact=touch.contact,
        unread_delta=touch.unread_delta,
    )
    others = [key for key in names.keys if key != created["canonical_key"]]
    await identity_links.link_names(session, names.business_id, others, created["id"])
    return created


async def _link(
    session: AsyncSession,
    names: CustomerNames,
    named: dict[str, NamedThread],
    locked: dict[int, RowMapping],
    touch: ThreadTouch | None,
) -> SettledThread:
    business_id = names.business_id
    leads = {row["lead_id"] for row in locked.values() if row["lead_id"] is not None}
    _refuse_another_lead(names, leads)
    if len(leads) > 1:
        # A message without a lead whose names are on two leads' threads (a phone on one, a
        # user id on the other): the CRM has to say who this is. Stored where its preferred
        # name leads, nothing merged or moved.
        preferred = named.get(names.preferred_key)
        survivor_id = preferred.conversation_id if preferred else min(locked)
        log.warning(
            "[WA-SESSION] names %s of business_id=%s lead to threads of %d leads: stored in "
            "thread_id=%s, nothing merged",
            names.keys,
            business_id,
            len(leads),
            survivor_id,
        )
        absorbed_ids: list[int] = []
    else:
        survivor_id = min(locked, key=lambda i: (_strength(locked[i]["canonical_key"]), i))
        absorbed_ids = sorted(set(locked) - {survivor_id})
    survivor = locked[survivor_id]
    merges = []
    for absorbed_id in absorbed_ids:
        merged = await identity_links.merge_conversations(
            session, survivor_id, absorbed_id, reason=f"same customer: {', '.join(names.keys)}"
        )
        if merged is None:  # both rows are locked by us: they cannot have gone
            raise RuntimeError(f"thread {absorbed_id} vanished while locked")
        survivor = merged
        merges.append(ThreadMerged(business_id, absorbed_id, survivor_id))
        log.warning(
            "[WA-SESSION] merged thread_id=%s into thread_id=%s for business_id=%s: %s name "
            "one customer",
            absorbed_id,
            survivor_id,
            business_id,
            ", ".join(names.keys),
        )
    target = _rekey_target(names, survivor["canonical_key"])
    if target is not None:
        log.info(
            "[WA-SESSION] thread_id=%s of business_id=%s re-keyed from %s to %s",
            survivor_id,
            business_id,
            survivor["canonical_key"],
            target,
        )
        survivor = await identity_links.rekey_conversation(
            session, business_id, survivor_id, target, lead_id=names.lead_id
        )
    # Names that led somewhere now lead to the survivor (merged), or stay with another lead.
    unlinked = [key for key in names.keys if key not in named and key != survivor["canonical_key"]]
    await identity_links.link_names(session, business_id, unlinked, survivor_id)
    if touch is not None:
        touched = await _touch(session, survivor_id, names, touch)
        assert touched is not None  # locked above
        survivor = touched
    return SettledThread(survivor, merges)


def _rekey_target(names: CustomerNames, current_key: str) -> str | None:
    """The key the customer's thread moves to, if the names call for one."""
    preferred = names.preferred_key
    if preferred == current_key:
        return None
    if _strength(preferred) < _strength(current_key):
        return preferred  # a lead for a phone thread, a phone for a user-id thread
    if _strength(preferred) == _strength(current_key) and current_key in names.earlier_keys:
        return preferred  # the new number (or user id) after a change
    return None


def _refuse_another_lead(names: CustomerNames, leads: set[str | None]) -> None:
    if names.lead_id is None:
        return
    others = sorted(lead for lead in leads if lead is not None and lead != names.lead_id)
    if others:
        raise Conflict(
            f"this customer is already linked to lead {others[0]!r}; moving a phone between "
            "leads is a merge of the leads in the CRM"
        )


async def _touch(
    session: AsyncSession, conversation_id: int, names: CustomerNames, touch: ThreadTouch
) -> RowMapping | None:
    return await statements.touch_conversation(
        session,
        conversation_id,
        phone_e164=names.phones[0] if names.phones else None,
        message_at=touch.message_at,
        reopen=touch.reopen,
        contact=touch.contact,
        unread_delta=touch.unread_delta,
        phone_is_current=touch.from_customer,
    )


async def current_thread_id(session: AsyncSession, business_id: int, thread_id: int) -> int:
    """`thread_id`, or the thread it was merged into: old links keep working."""
    into = await identity_links.merged_into(session, business_id, thread_id)
    return thread_id if into is None else into


async def on_current_thread(
    session: AsyncSession,
    business_id: int,
    thread_id: int,
    act: Callable[[int], Awaitable[T | None]],
) -> T | None:
    """`act` on the thread, or on the thread it was merged into when it is gone (an old link);
    None when neither is there. The merge record is read only when the thread is missing."""
    done = await act(thread_id)
    if done is None:
        current = await current_thread_id(session, business_id, thread_id)
        if current != thread_id:
            done = await act(current)
    return done
