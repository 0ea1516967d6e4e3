"""The fake Cloud API answers as scripted, records what it was sent, and misbehaves on cue."""

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import httpx
import pytest

from tests.fake_cloud_api import (
    FakeCloudApi,
    drop_after_reading,
    hold,
    http_error,
    slow,
    success,
)

TOKEN = "EAAG-fake-token-for-tests"
PATH = "/v21.0/106540352242922/messages"


def text_send(body: str = "hello", to: str = "16505551234") -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "to": to,
        "type": "text",
        "text": {"body": body},
    }


@pytest.fixture
def fake() -> Iterator[FakeCloudApi]:
    with FakeCloudApi() as api:
        yield api


@pytest.fixture
def client(fake: FakeCloudApi) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=fake.base_url, headers=headers, timeout=5) as http:
        yield http


def test_a_send_is_recorded_with_its_token_and_answered_with_a_unique_wamid(
    fake: FakeCloudApi, client: httpx.Client
) -> None:
    first = client.post(PATH, json=text_send("one"))
    second = client.post(PATH, json=text_send("two"))  # same keep-alive connection

    assert first.status_code == second.status_code == 200
    answer = first.json()
    assert answer["messaging_product"] == "whatsapp"
    assert answer["contacts"] == [{"input": "16505551234", "wa_id": "16505551234"}]
    ids = [first.json()["messages"][0]["id"], second.json()["messages"][0]["id"]]
    assert all(wamid.startswith("wamid.") for wamid in ids)
    assert ids[0] != ids[1]

    recorded = fake.requests
    assert [r.json for r in recorded] == [text_send("one"), text_send("two")]
    assert [r.wamid for r in recorded] == ids
    assert recorded[0].method == "POST"
    assert recorded[0].version == "v21.0"
    assert recorded[0].phone_number_id == "106540352242922"
    assert recorded[0].headers["authorization"] == f"Bearer {TOKEN}"
    assert recorded[0].answer == 200
    assert TOKEN not in repr(recorded[0])


def test_scripted_rate_limit_is_answered_once_then_sends_succeed(
    fake: FakeCloudApi, client: httpx.Client
) -> None:
    fake.answer_next(http_error(429, code=130429, retry_after=2))

    limited = client.post(PATH, json=text_send())
    accepted = client.post(PATH, json=text_send())

    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "2"
    error = limited.json()["error"]
    assert error["code"] == 130429
    assert error["type"] == "OAuthException"
    assert error["error_data"]["messaging_product"] == "whatsapp"
    assert error["fbtrace_id"]
    assert accepted.status_code == 200
    assert [(r.answer, r.wamid is None) for r in fake.requests] == [(429, True), (200, False)]


def test_a_scripted_400_carries_the_cloud_api_error_code(
    fake: FakeCloudApi, client: httpx.Client
) -> None:
    fake.answer_next(http_error(400, code=131047), success(), http_error(400, code=132001))

    codes = [client.post(PATH, json=text_send()).status_code for _ in range(4)]

    assert codes == [400, 200, 400, 200]  # the script used up, the default (success) applies
    assert [r.answer for r in fake.requests] == [400, 200, 400, 200]


def test_the_error_body_names_the_code_and_its_title(
    client: httpx.Client, fake: FakeCloudApi
) -> None:
    fake.answer_next(http_error(400, code=131047))

    error = client.post(PATH, json=text_send()).json()["error"]

    assert error["code"] == 131047
    assert error["message"] == "(#131047) Re-engagement message"
    assert error["error_data"]["details"] == "Re-engagement message"


def test_an_invalid_send_is_refused_without_using_the_script(
    fake: FakeCloudApi, client: httpx.Client
) -> None:
    fake.answer_next(http_error(503))

    refused = client.post(PATH, json={"to": "16505551234", "type": "text"})
    scripted = client.post(PATH, json=text_send())

    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == 100
    assert scripted.status_code == 503
    assert scripted.json()["error"]["code"] == 2


def test_a_dropped_connection_comes_after_the_request_was_recorded(
    fake: FakeCloudApi, client: httpx.Client
) -> None:
    fake.answer_next(drop_after_reading())

    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        client.post(PATH, json=text_send("sent twice?"))

    [dropped] = fake.requests
    assert dropped.json == text_send("sent twice?")
    assert dropped.answer == "dropped"
    assert dropped.wamid is None
    assert client.post(PATH, json=text_send()).status_code == 200  # a fresh connection works


def test_a_held_request_is_answered_only_when_released_and_others_go_through(
    fake: FakeCloudApi, client: httpx.Client
) -> None:
    fake.answer_next(hold())
    with ThreadPoolExecutor(max_workers=1) as pool:
        held = pool.submit(client.post, PATH, json=text_send("held"))
        fake.wait_for_requests(1, timeout=2)

        with httpx.Client(base_url=fake.base_url, timeout=2) as other:
            assert other.post(PATH, json=text_send("meanwhile")).status_code == 200
        with pytest.raises(FutureTimeout):
            held.result(timeout=0.2)
        assert fake.requests[0].answer == "held"

        assert fake.release_held() == 1
        assert held.result(timeout=2).status_code == 200
    [answered, _] = fake.requests
    assert answered.answer == 200
    assert answered.wamid == held.result().json()["messages"][0]["id"]


def test_stop_closes_a_held_request_unanswered() -> None:
    fake = FakeCloudApi().start()
    fake.answer_next(hold())
    with ThreadPoolExecutor(max_workers=1) as pool, httpx.Client(timeout=5) as http:
        held = pool.submit(http.post, fake.base_url + PATH, json=text_send())
        fake.wait_for_requests(1, timeout=2)
        started = time.monotonic()
        fake.stop()

        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            held.result(timeout=2)
    assert time.monotonic() - started < 2
    assert fake.requests[0].answer == "held"


def test_a_slow_answer_is_recorded_at_once_and_sent_after_the_delay(
    fake: FakeCloudApi, client: httpx.Client
) -> None:
    fake.answer_next(slow(0.3))
    with ThreadPoolExecutor(max_workers=1) as pool:
        started = time.monotonic()
        answer = pool.submit(client.post, PATH, json=text_send())
        [recorded] = fake.wait_for_requests(1, timeout=2)
        assert recorded.received_at - started < 0.25
        assert answer.result(timeout=2).status_code == 200
    assert time.monotonic() - started >= 0.3


def test_a_client_timeout_on_a_slow_answer_still_leaves_the_request_recorded(
    fake: FakeCloudApi,
) -> None:
    fake.answer_next(slow(1.0, then=http_error(500)))
    with (
        httpx.Client(base_url=fake.base_url, timeout=0.1) as impatient,
        pytest.raises(httpx.ReadTimeout),
    ):
        impatient.post(PATH, json=text_send())
    assert fake.requests[0].answer == 500


def test_waiting_for_missing_requests_fails_with_the_log_but_no_token(
    fake: FakeCloudApi, client: httpx.Client
) -> None:
    client.post(PATH, json=text_send("secret text"))

    with pytest.raises(AssertionError, match="expected 2 request") as failure:
        fake.wait_for_requests(2, timeout=0.1)

    assert PATH in str(failure.value)
    assert TOKEN not in str(failure.value)
    assert "secret text" not in str(failure.value)
