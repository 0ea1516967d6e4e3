"""The inbox page (gql/static/inbox/) in a real browser: headless Chromium driven by Playwright
(issue 17). Every page is cut off from the internet (any request leaving 127.0.0.1 is aborted),
so these also prove the page needs no CDN.

Debian's Chromium is used (`/usr/bin/chromium`; `.ci/run` installs it on CI), never a browser
downloaded by `playwright install`. Without one the tests skip, saying how to install it; on
CI a skip fails (tests/conftest.py). A failing test leaves a screenshot of each of its pages in
test-artifacts/<test name>/.
"""

import asyncio
import contextlib
import dataclasses
import os
import re
import shutil
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette

from domain.access import Role
from domain.events import MessageStatusChanged
from gql.app import create_app
from gql.live_protocol import LeanWebSocketsProtocol
from gql.settings import Settings
from tests.conftest import PROJECT_ROOT, GraphQLClient, ingest, token_for
from tests.fake_cloud_api import FakeCloudApi
from tests.webhooks import (
    SECOND_PHONE_NUMBER_ID,
    connect_channel,
    delivery,
    post_delivery,
    status,
    text_message,
)

if os.environ.get("CI") == "true":
    # On CI the browser tests must run: a missing Playwright fails here rather than skipping
    # the whole file (a module-level skip never reaches tests/conftest.py's CI rule).
    import playwright.async_api as playwright_api
else:
    playwright_api = pytest.importorskip(
        "playwright.async_api", reason="Playwright is not installed: make install-dev"
    )
Browser = playwright_api.Browser
BrowserContext = playwright_api.BrowserContext
Page = playwright_api.Page
expect = playwright_api.expect

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser")
TOKEN_KEY = "wa-inbox.token"
ARTIFACTS = PROJECT_ROOT / "test-artifacts"
SCREENSHOT = PROJECT_ROOT / "docs" / "inbox.png"

ANA = "16505551234"
BRUNO = "16505550000"


def find_chromium() -> str | None:
    for candidate in CHROMIUM_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    executable = find_chromium()
    if executable is None:
        pytest.skip(
            "no Chromium found for the browser tests: install Debian's with "
            "`sudo apt-get install -y chromium` (or put a chromium on PATH)"
        )
    async with playwright_api.async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            yield launched
        finally:
            await launched.close()


class RestartableServer:
    """The test's app served by uvicorn on 127.0.0.1, stopped and started again on the same
    port, as a restarted server is to a browser (the app's lifespan runs once, in `app`)."""

    def __init__(self, app: Starlette) -> None:
        self.app = app
        self.port = 0
        self.server: uvicorn.Server | None = None
        self.task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="off",
            ws=LeanWebSocketsProtocol,
            ws_per_message_deflate=False,
            timeout_graceful_shutdown=2,
        )
        self.server = uvicorn.Server(config)
        self.task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            await asyncio.sleep(0.01)
            if self.task.done():
                self.task.result()
        self.port = self.server.servers[0].sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        assert self.task is not None
        self.server.should_exit = True
        await self.task


@pytest.fixture
async def server(app: Starlette) -> AsyncIterator[RestartableServer]:
    served = RestartableServer(app)
    await served.start()
    try:
        yield served
    finally:
        if served.server is not None and not served.task.done():  # type: ignore[union-attr]
            await served.stop()


@dataclasses.dataclass
class Tabs:
    """The browser contexts a test opened (each its own sessionStorage, as another person's
    browser), screenshotted if the test fails."""

    browser: Browser
    base_url: str
    contexts: list[BrowserContext] = dataclasses.field(default_factory=list)
    # Uncaught exceptions and unhandled rejections of the pages' scripts: a test fails on any.
    page_errors: list[str] = dataclasses.field(default_factory=list)

    async def open(
        self,
        business_id: int = 1,
        user_id: str = "agent-1",
        *,
        sign_in: bool = True,
        viewport: dict[str, int] | None = None,
        timezone_id: str | None = None,
        fixed_time: datetime | None = None,
    ) -> Page:
        """A tab on the inbox, signed in (its token put in sessionStorage) unless told not;
        its clock stopped at `fixed_time` if given."""
        context = await self.browser.new_context(
            viewport=viewport or {"width": 1100, "height": 720},
            locale="en-GB",
            timezone_id=timezone_id,
        )
        self.contexts.append(context)
        await context.route("**/*", self._local_only)
        if fixed_time is not None:
            await context.clock.set_fixed_time(fixed_time)
        if sign_in:
            token = token_for(business_id, user_id=user_id, role=Role.AGENT)
            await context.add_init_script(f"sessionStorage.setItem({TOKEN_KEY!r}, {token!r});")
        page = await context.new_page()
        page.on("pageerror", lambda error: self.page_errors.append(f"{page.url}: {error}"))
        await page.goto(self.base_url + "/")
        if sign_in:
            await expect_live(page)
        return page

    @staticmethod
    async def _local_only(route: Any) -> None:
        if route.request.url.startswith(("http://127.0.0.1:", "ws://127.0.0.1:")):
            await route.continue_()
        else:
            await route.abort()

    async def close(self) -> None:
        for context in self.contexts:
            await context.close()
        self.contexts.clear()

    async def screenshot_all(self, folder: Path) -> None:
        await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
        for number, context in enumerate(self.contexts):
            for page_number, page in enumerate(context.pages):
                with contextlib.suppress(Exception):
                    await page.screenshot(path=folder / f"tab{number}-{page_number}.png")


@pytest.fixture
async def tabs(
    request: pytest.FixtureRequest, browser: Browser, server: RestartableServer
) -> AsyncIterator[Tabs]:
    opened = Tabs(browser, server.url)
    failed_before = request.session.testsfailed
    try:
        yield opened
    finally:
        if request.session.testsfailed > failed_before:
            await opened.screenshot_all(ARTIFACTS / request.node.name)
        await opened.close()
    assert opened.page_errors == []


async def expect_live(page: Page) -> None:
    await expect(page.locator("#connection")).to_have_attribute("data-state", "live")


def thread_row(page: Page, name: str) -> Any:
    return page.locator(".thread-row", has_text=name)


async def deliver_text(
    http: httpx.AsyncClient,
    provider_message_id: str,
    *,
    sender: str = ANA,
    name: str = "Ana Souza",
    body: str = "hello",
    phone_number_id: str | None = None,
    timestamp: int = 1_764_000_000,
) -> None:
    payload = delivery(
        messages=[text_message(provider_message_id, sender=sender, body=body, timestamp=timestamp)],
        contacts=[{"profile": {"name": name}, "wa_id": sender}],
        **({"phone_number_id": phone_number_id} if phone_number_id else {}),
    )
    response = await post_delivery(http, payload)
    assert response.status_code == 200, response.text


async def test_a_webhook_message_and_its_badge_appear_live_in_every_tab_of_its_business_only(
    tabs: Tabs, client: GraphQLClient, http: httpx.AsyncClient
) -> None:
    await connect_channel(client)
    await connect_channel(client.as_business(2), SECOND_PHONE_NUMBER_ID)
    # One agent signs in through the form, the way a person does.
    first = await tabs.open(sign_in=False)
    # A server with an AUTH_SECRET pre-fills nothing.
    await expect(first.locator("#token")).to_be_focused()
    await expect(first.locator("#token")).to_have_value("")
    await expect(first.locator("#development-token-note")).to_be_hidden()
    token = token_for(1, user_id="agent-1", role=Role.AGENT)
    await first.fill("#token", f"Bearer {token}")
    await first.get_by_role("button", name="Sign in").click()
    await expect_live(first)
    # Kept in this tab's sessionStorage, never in the address bar.
    assert first.url == tabs.base_url + "/"
    stored = await first.evaluate(f"sessionStorage.getItem({TOKEN_KEY!r})")
    assert stored == token
    second = await tabs.open(user_id="agent-2")
    other_business = await tabs.open(business_id=2, user_id="agent-9")

    await deliver_text(http, "wamid.browser-1", body="Is my order on its way?")
    await deliver_text(
        http,
        "wamid.browser-b2",
        sender=BRUNO,
        name="Bruno",
        body="Another business",
        phone_number_id=SECOND_PHONE_NUMBER_ID,
    )

    for page in (first, second):
        row = thread_row(page, "Ana Souza")
        await expect(row).to_contain_text("Is my order on its way?")
        await expect(row.locator(".badge")).to_have_text("1")
        # What a screen reader says of the row: name, time, preview and the unread count (the
        # badge itself is hidden from it).
        spoken = re.compile(r"^Ana Souza .*Is my order on its way\?\s*, 1 unread$")
        await expect(page.get_by_role("button", name=spoken)).to_be_visible()
        await expect(page.locator("#total-unread")).to_have_text("1")
        await expect(page).to_have_title("(1) Inbox")
    # The other business saw its own message arrive, and nothing of the first business.
    await expect(thread_row(other_business, "Bruno")).to_contain_text("Another business")
    await expect(other_business.locator(".thread-row")).to_have_count(1)
    await expect(other_business.locator("#total-unread")).to_have_text("1")

    await thread_row(first, "Ana Souza").click()
    await expect(first.locator(".message", has_text="Is my order on its way?")).to_be_visible()
    await expect(first.locator(".message").first.locator(".source-badge")).to_have_text("Customer")
    for page in (first, second):
        await expect(thread_row(page, "Ana Souza").locator(".badge")).to_be_hidden()
        await expect(page.locator("#total-unread")).to_be_hidden()
        await expect(page).to_have_title("Inbox")
    await expect(other_business.locator("#total-unread")).to_have_text("1")


async def test_a_development_server_pre_fills_the_sign_in_form_with_a_token_that_works(
    tabs: Tabs, settings: Settings
) -> None:
    development = create_app(dataclasses.replace(settings, development_secret=True))
    async with development.router.lifespan_context(development):
        served = RestartableServer(development)
        await served.start()
        try:
            page = await tabs.open(sign_in=False)
            await page.goto(served.url + "/")
            await expect(page.locator("#development-token-note")).to_be_visible()
            await expect(page.locator("#token")).not_to_have_value("")
            await page.get_by_role("button", name="Sign in").click()
            await expect_live(page)
            await expect(page.locator("#no-threads")).to_be_visible()
        finally:
            await served.stop()


async def test_a_refused_token_is_sent_back_to_the_sign_in_form_saying_why(tabs: Tabs) -> None:
    page = await tabs.open(sign_in=False)
    await page.fill("#token", "not-a-token")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#sign-in-error")).to_contain_text("token")
    await expect(page.locator("#inbox")).to_be_hidden()
    assert await page.evaluate(f"sessionStorage.getItem({TOKEN_KEY!r})") is None


LINK_LEAD = """
mutation($phone: String, $leadId: ID!) { linkLead(phone: $phone, leadId: $leadId) { id } }
"""


@pytest.mark.parametrize("open_row", ["Bruno", "Ana Souza"], ids=["merged-away", "survivor"])
async def test_two_threads_found_to_be_one_customer_become_one_row_live(
    tabs: Tabs, client: GraphQLClient, http: httpx.AsyncClient, open_row: str
) -> None:
    await connect_channel(client)
    await deliver_text(http, "wamid.merge-ana", body="From my first number")
    await deliver_text(
        http, "wamid.merge-bruno", sender=BRUNO, name="Bruno", body="From my second number"
    )
    page = await tabs.open()
    await expect(page.locator(".thread-row")).to_have_count(2)
    await thread_row(page, open_row).click()
    await expect(page.locator(".message")).to_have_count(1)

    # The CRM says both numbers are lead 501's: Bruno's thread is merged into Ana's, whichever
    # of the two is open.
    await client.execute(LINK_LEAD, {"phone": f"+{ANA}", "leadId": "501"})
    await client.execute(LINK_LEAD, {"phone": f"+{BRUNO}", "leadId": "501"})

    await expect(page.locator(".thread-row")).to_have_count(1)
    await expect(page.locator(".message")).to_have_count(2)
    await expect(page.locator(".message").first).to_contain_text("From my first number")
    # Open, so read: the merged-in message does not stay unread.
    await expect(page.locator("#total-unread")).to_be_hidden()


async def test_a_reply_is_sent_once_however_often_enter_is_pressed(
    tabs: Tabs, client: GraphQLClient, http: httpx.AsyncClient
) -> None:
    await client.execute(
        "mutation($id: String!) { connectWhatsAppChannel(phoneNumberId: $id, "
        'accessToken: "EAAG-fake-token") { id } }',
        {"id": "106540352242922"},
    )
    await deliver_text(http, "wamid.double", body="Hello?", timestamp=int(time.time()))
    page = await tabs.open()
    await thread_row(page, "Ana Souza").click()
    await page.fill("#reply-body", "Only once, please")
    for _ in range(3):
        await page.keyboard.press("Enter")
    await expect(page.locator(".message--outbound")).to_have_count(1)
    await asyncio.sleep(0.3)
    await expect(page.locator(".message--outbound")).to_have_count(1)


async def test_signing_in_twice_in_one_tab_keeps_one_live_connection(
    tabs: Tabs, client: GraphQLClient
) -> None:
    page = await tabs.open(sign_in=False)
    sockets: list[Any] = []
    page.on("websocket", lambda socket: sockets.append(socket))
    await page.fill("#token", token_for(1, role=Role.AGENT))
    await page.evaluate(
        "() => { const form = document.getElementById('sign-in-form'); "
        "form.requestSubmit(); form.requestSubmit(); }"
    )
    await expect_live(page)
    await asyncio.sleep(0.5)
    assert len([socket for socket in sockets if not socket.is_closed()]) == 1


async def test_a_restarted_server_is_reconnected_to_and_what_arrived_meanwhile_is_shown(
    tabs: Tabs, server: RestartableServer, client: GraphQLClient, http: httpx.AsyncClient
) -> None:
    await connect_channel(client)
    await deliver_text(http, "wamid.before-restart", body="First question")
    page = await tabs.open()
    await thread_row(page, "Ana Souza").click()
    await expect(page.locator(".message", has_text="First question")).to_be_visible()

    await server.stop()
    await expect(page.locator("#connection")).to_have_attribute("data-state", "reconnecting")
    # Stored while no websocket could tell the page: only a refetch shows it.
    await deliver_text(http, "wamid.during-restart", body="Are you there?", timestamp=1_764_000_060)
    await deliver_text(
        http,
        "wamid.other-customer",
        sender=BRUNO,
        name="Bruno",
        body="New here",
        timestamp=1_764_000_070,
    )
    await server.start()

    await expect_live(page)
    await expect(page.locator(".message", has_text="Are you there?")).to_be_visible()
    await expect(thread_row(page, "Bruno").locator(".badge")).to_have_text("1")
    # The open thread was marked read again, so only Bruno's message counts.
    await expect(page.locator("#total-unread")).to_have_text("1")
    # And it is live again.
    await deliver_text(http, "wamid.after-restart", body="Thanks!", timestamp=1_764_000_090)
    await expect(page.locator(".message", has_text="Thanks!")).to_be_visible()


async def test_a_page_told_it_fell_behind_refetches_what_it_missed_and_stays_live(
    tabs: Tabs, app: Starlette, client: GraphQLClient, http: httpx.AsyncClient
) -> None:
    """RESYNC_REQUIRED: the hub dropped this page's subscriptions (gql/fanout.py, a subscriber
    too far behind). Events it never received are refetched, and it subscribes again."""
    await connect_channel(client)
    await deliver_text(http, "wamid.before-lag", body="First question")
    page = await tabs.open()
    await thread_row(page, "Ana Souza").click()
    await expect(page.locator(".message", has_text="First question")).to_be_visible()
    hub = app.state.hub
    members = [
        member
        for audiences in hub._audiences.values()
        for audience in audiences.values()
        for member in list(audience.members.values())
    ]
    assert len(members) == 4, hub.registered()

    async def deliver_nothing(event: Any) -> None:
        return None

    # Stored while the hub delivers nothing: the page is never told of these.
    hub._deliver = deliver_nothing
    await deliver_text(http, "wamid.missed", body="Did you see this?", timestamp=1_764_000_060)
    await deliver_text(
        http, "wamid.missed-other", sender=BRUNO, name="Bruno", body="Hi", timestamp=1_764_000_070
    )
    await asyncio.sleep(0.3)
    await expect(page.locator(".message", has_text="Did you see this?")).to_have_count(0)
    del hub._deliver
    for member in members:
        hub._lagged(member)

    await expect(page.locator(".message", has_text="Did you see this?")).to_be_visible()
    await expect(thread_row(page, "Bruno").locator(".badge")).to_have_text("1")
    for _ in range(200):
        if hub.registered()[1] == 4:
            break
        await asyncio.sleep(0.025)
    assert hub.registered()[1] == 4, hub.registered()
    await deliver_text(http, "wamid.after-lag", body="Still there?", timestamp=1_764_000_090)
    await expect(page.locator(".message", has_text="Still there?")).to_be_visible()


async def test_a_thread_shows_each_message_by_source_and_kind_and_the_reply_box_says_why_it_is_off(
    tabs: Tabs, client: GraphQLClient, http: httpx.AsyncClient
) -> None:
    # Outbound only: the customer never wrote, so the service window never opened.
    phone = "+14155550142"
    for source, body, minute in [
        ("BOT", "Hi! I am the order bot.", 1),
        ("AUTOMATION", "Your order #1042 has shipped.", 2),
        ("HUMAN", "Anything else I can help with?", 3),
    ]:
        await ingest(
            client,
            phone=phone,
            direction="OUTBOUND",
            source=source,
            body=body,
            sentAt=f"2026-11-30T10:0{minute}:00+00:00",
        )
    page = await tabs.open()
    # By keyboard: to the row, Enter opens it.
    await thread_row(page, "+14155550142").focus()
    await page.keyboard.press("Enter")
    messages = page.locator(".message")
    await expect(messages).to_have_count(3)
    await expect(messages.locator(".source-badge")).to_have_text(["Bot", "Automation", "Agent"])
    await expect(messages.nth(0)).to_have_class("message message--bot message--outbound")
    await expect(page.locator("#reply-body")).to_be_disabled()
    await expect(page.locator("#reply-send")).to_be_disabled()
    await expect(page.locator("#reply-disabled-reason")).to_contain_text(
        "once the customer has written"
    )


async def test_older_messages_load_when_the_thread_is_scrolled_to_the_top(
    tabs: Tabs, client: GraphQLClient
) -> None:
    for number in range(45):
        await ingest(
            client,
            phone="+14155550143",
            body=f"message {number:02d}",
            sentAt=f"2026-11-30T10:{number:02d}:00+00:00",
            historical=True,
        )
    page = await tabs.open()
    await thread_row(page, "+14155550143").click()
    await expect(page.locator(".message")).to_have_count(30)
    await expect(page.locator(".message").last).to_contain_text("message 44")
    await page.locator("#message-scroller").evaluate("scroller => { scroller.scrollTop = 0; }")
    await expect(page.locator(".message")).to_have_count(45)
    await expect(page.locator(".message").first).to_contain_text("message 00")
    await expect(page.locator("#load-older")).to_be_hidden()


async def test_more_threads_load_by_the_button_until_there_are_none(
    tabs: Tabs, client: GraphQLClient
) -> None:
    for number in range(23):
        await ingest(client, phone=f"+1415555{number:04d}", body=f"thread {number}")
    page = await tabs.open()
    await expect(page.locator(".thread-row")).to_have_count(20)
    await expect(thread_row(page, "+14155550022")).to_contain_text("thread 22")  # latest first
    await page.get_by_role("button", name="Load more threads").click()
    await expect(page.locator(".thread-row")).to_have_count(23)
    await expect(page.locator(".thread-row").last).to_contain_text("thread 0")
    await expect(page.locator("#load-more-threads")).to_be_hidden()


async def test_the_inbox_fits_a_phone_screen_one_pane_at_a_time(
    tabs: Tabs, client: GraphQLClient, http: httpx.AsyncClient
) -> None:
    await connect_channel(client)
    await deliver_text(http, "wamid.phone-1", body="On my phone")
    page = await tabs.open(viewport={"width": 375, "height": 700})
    await thread_row(page, "Ana Souza").click()
    await expect(page.locator(".thread-pane")).to_be_hidden()
    await expect(page.locator(".message", has_text="On my phone")).to_be_visible()
    no_sideways_scroll = "document.documentElement.scrollWidth <= window.innerWidth"
    assert await page.evaluate(no_sideways_scroll)
    await page.keyboard.press("Escape")
    await expect(page.locator(".thread-pane")).to_be_visible()
    await expect(thread_row(page, "Ana Souza")).to_be_focused()


async def test_graphiql_loads_and_introspects_with_no_internet_access(
    tabs: Tabs, server: RestartableServer
) -> None:
    page = await tabs.open(sign_in=False)
    await page.goto(server.url + "/graphql")
    await expect(page.locator(".graphiql-container .graphiql-editors")).to_be_visible()
    await expect(page.get_by_text("Loading...")).to_have_count(0)
    assert tabs.page_errors == []  # `Cookies is not defined` when js-cookie cannot load


# The README's screenshot: a small team's morning, at fixed times, seen at a fixed time in UTC,
# so the picture only changes when the page does.
MORNING = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
DELETE_MESSAGE = "mutation($id: ID!) { deleteMessage(id: $id) { id } }"


def at(minutes: int) -> int:
    return int((MORNING + timedelta(minutes=minutes)).timestamp())


def iso(minutes: int) -> str:
    return (MORNING + timedelta(minutes=minutes)).isoformat()


async def seed_morning(client: GraphQLClient, http: httpx.AsyncClient) -> None:
    await connect_channel(client)
    await deliver_text(http, "wamid.m1", body="Hi, my order #1042 arrived damaged", timestamp=at(0))
    photo = text_message("wamid.m2", sender=ANA, timestamp=at(1))
    photo.pop("text")
    photo.update(
        type="image", image={"id": "4711", "caption": "The box", "mime_type": "image/jpeg"}
    )
    await post_delivery(http, delivery(messages=[photo]))
    for source, body, minute, wamid in [
        ("BOT", "Sorry to hear that! An agent will take a look.", 2, "wamid.out-bot"),
        ("AUTOMATION", "Ticket #5521 opened for order #1042.", 3, "wamid.out-auto"),
        ("HUMAN", "I've sent a replacement, it ships today.", 9, "wamid.out-human"),
    ]:
        await ingest(
            client,
            phone=f"+{ANA}",
            direction="OUTBOUND",
            source=source,
            body=body,
            providerMessageId=wamid,
            sentAt=iso(minute),
        )
    for wamid, name in [("wamid.out-bot", "read"), ("wamid.out-auto", "delivered")]:
        await post_delivery(http, delivery(statuses=[status(wamid, name, timestamp=at(10))]))
    await post_delivery(
        http, delivery(statuses=[status("wamid.out-human", "sent", timestamp=at(10))])
    )
    oops = await deliver_and_get_id(client, http, "wamid.m3", "wrong photo, sorry", at(4))
    await client.execute(DELETE_MESSAGE, {"id": oops})
    thanks = text_message("wamid.m4", sender=ANA, body="Thank you so much!", timestamp=at(11))
    thanks["context"] = {"from": "15550783881", "id": "wamid.out-human"}
    await post_delivery(http, delivery(messages=[thanks]))
    await client.execute(MARK_READ, {"phone": f"+{ANA}"})
    await deliver_text(
        http,
        "wamid.b1",
        sender=BRUNO,
        name="Bruno Lima",
        body="Do you ship to Porto?",
        timestamp=at(20),
    )
    await deliver_text(
        http,
        "wamid.b2",
        sender=BRUNO,
        name="Bruno Lima",
        body="And how long does it take?",
        timestamp=at(21),
    )
    await deliver_text(
        http,
        "wamid.c1",
        sender="16505550001",
        name="Carla Mendes",
        body="Is the blue one back in stock?",
        timestamp=at(-600),
    )


MARK_READ = "mutation($phone: String) { markRead(phone: $phone) { totalUnread } }"


async def deliver_and_get_id(
    client: GraphQLClient, http: httpx.AsyncClient, wamid: str, body: str, timestamp: int
) -> str:
    """Deliver Ana's text `wamid` and return its message id."""
    await deliver_text(http, wamid, body=body, timestamp=timestamp)
    data = await client.execute(
        "query($phone: String) { thread(phone: $phone) { messages(last: 20) "
        "{ edges { node { id providerMessageId } } } } }",
        {"phone": f"+{ANA}"},
    )
    edges = data["thread"]["messages"]["edges"]
    (message_id,) = [e["node"]["id"] for e in edges if e["node"]["providerMessageId"] == wamid]
    return str(message_id)


async def test_the_readme_screenshot_of_the_inbox(
    tabs: Tabs, client: GraphQLClient, http: httpx.AsyncClient
) -> None:
    """docs/inbox.png, shown in the README: every kind of message, badges, ticks, a reply."""
    await seed_morning(client, http)
    page = await tabs.open(
        viewport={"width": 1100, "height": 660},
        timezone_id="UTC",
        fixed_time=MORNING + timedelta(minutes=30),
    )
    await thread_row(page, "Ana Souza").click()
    await expect(page.locator(".message")).to_have_count(7)
    await expect(page.locator("#reply-body")).to_be_enabled()
    await page.locator("#reply-body").blur()
    await page.screenshot(path=SCREENSHOT)
    assert SCREENSHOT.stat().st_size > 10_000


# --- Sending (issue 16) -------------------------------------------------------------------


async def test_a_reply_typed_in_the_page_reaches_the_cloud_api_once_and_its_ticks_follow(
    browser: Browser, request: pytest.FixtureRequest, settings: Settings, client: GraphQLClient
) -> None:
    with FakeCloudApi() as cloud_api:
        sending = dataclasses.replace(
            settings,
            **{
                "whatsapp_api_base_url": cloud_api.base_url,
                "send_poll_interval_ms": 50,
                "send_retry_base_ms": 50,
            },
        )
        app = create_app(sending)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                admin = GraphQLClient(http)
                await admin.execute(
                    "mutation($id: String!) { connectWhatsAppChannel(phoneNumberId: $id, "
                    'accessToken: "EAAG-fake-token") { id } }',
                    {"id": "106540352242922"},
                )
                # Just now: the customer service window is open.
                await deliver_text(
                    http,
                    "wamid.window-open",
                    body="Can I change my order?",
                    timestamp=int(time.time()),
                )
                served = RestartableServer(app)
                await served.start()
                opened = Tabs(browser, served.url)
                try:
                    page = await opened.open()
                    await thread_row(page, "Ana Souza").click()
                    await page.fill("#reply-body", "Yes, tell me what to change.")
                    await page.keyboard.press("Enter")
                    outbound = page.locator(".message--outbound")
                    await expect(outbound).to_contain_text("Yes, tell me what to change.")
                    # The fake waits on threads; the sender runs on this loop, so wait beside it.
                    (sent,) = await asyncio.to_thread(cloud_api.wait_for_requests, 1)
                    assert sent.json["text"]["body"] == "Yes, tell me what to change."
                    ticks = outbound.locator(".ticks")
                    await expect(ticks).to_have_attribute("data-status", "SENT")
                    for name, expected in [("delivered", "DELIVERED"), ("read", "READ")]:
                        await post_delivery(http, delivery(statuses=[status(sent.wamid, name)]))
                        await expect(ticks).to_have_attribute("data-status", expected)
                    # Another instance's SENT, published late: the page keeps the furthest.
                    message_id = sent.json["biz_opaque_callback_data"].split(":")[1]
                    found = await admin.execute(
                        "query($id: ID!) { message(id: $id) { threadId } }", {"id": message_id}
                    )
                    thread_id = int(found["message"]["threadId"])
                    app.state.hub.publish(
                        MessageStatusChanged(1, thread_id, int(message_id), "sent")
                    )
                    # Events are delivered in order: once the next message shows, the late
                    # tick has reached the page too.
                    await deliver_text(
                        http, "wamid.after-late-tick", body="Thanks", timestamp=int(time.time())
                    )
                    await expect(page.locator(".message", has_text="Thanks")).to_be_visible()
                    await expect(ticks).to_have_attribute("data-status", "READ")
                    await asyncio.sleep(0.5)
                    assert len(cloud_api.requests) == 1
                except BaseException:
                    await opened.screenshot_all(ARTIFACTS / request.node.name)
                    raise
                finally:
                    await opened.close()
                    await served.stop()


async def test_a_reply_the_server_refuses_is_shown_inline(
    tabs: Tabs, client: GraphQLClient, http: httpx.AsyncClient
) -> None:
    # The channel has no access token: sendMessage answers CHANNEL_NOT_CONFIGURED.
    await connect_channel(client)
    await deliver_text(http, "wamid.no-token", body="Hello?", timestamp=int(time.time()))
    page = await tabs.open()
    await thread_row(page, "Ana Souza").click()
    await page.fill("#reply-body", "This cannot be sent")
    await page.get_by_role("button", name="Send").click()
    await expect(page.locator("#reply-error")).not_to_be_empty()
    await expect(page.locator(".message--outbound")).to_have_count(0)
    await expect(page.locator("#reply-body")).to_have_value("This cannot be sent")
