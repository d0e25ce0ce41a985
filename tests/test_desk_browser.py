"""The support desk in a real browser: Debian's chromium, headless, through its chromedriver.

One ``perennial serve`` on loopback (the real all-MiniLM-L6-v2 encoder, six BANKING77 intents; see
``test_desk_api.py``) and one browser; each tab has its own sessionStorage, so a tab is one
customer or one operator. Screenshots of both pages go to ``$PERENNIAL_SCREENSHOTS`` (default: a
temporary directory); the run prints where.

Selenium is pointed at ``/usr/bin/chromedriver`` and never downloads a driver (``SE_OFFLINE``).
Without chromium, chromedriver or selenium the tests skip, saying which is missing (``make test``
installs them with apt where it can).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import test_service_support
from test_desk_api import (
    KNOWN,
    NEW_TOPIC,
    NEW_TOPIC_AGAIN,
    OPERATOR,
    READER,
    banking,
    ok,
    start_desk,
)
from test_service_support import Server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 30.0  # seconds; generous for a loaded machine (never a timed assertion: a ceiling)

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.skip(
        f"the browser tests need Debian's chromium and chromium-driver ({CHROMIUM}, "
        f"{CHROMEDRIVER}): apt-get install chromium chromium-driver (make test does, as root)",
        allow_module_level=True,
    )

from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_desk(tmp_path_factory.mktemp("desk-browser"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    folder = Path(os.environ.get("PERENNIAL_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    folder.mkdir(parents=True, exist_ok=True)
    request.config.desk_screenshots = folder  # printed at the end of the run (conftest.py)
    return folder


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not fetch anything
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1280,1000")
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")  # chromium's sandbox refuses to run as root
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def wait_for(driver: Any, condition: Callable[[], Any], what: str) -> Any:
    """The first truthy value of ``condition``, polled until ``WAIT`` seconds have passed."""

    def check(_: Any) -> Any:
        try:
            return condition()
        except StaleElementReferenceException:  # redrawn meanwhile: ask again
            return False

    return WebDriverWait(driver, WAIT, poll_frequency=0.1).until(check, message=what)


def new_tab(driver: Any, url: str) -> str:
    driver.switch_to.new_window("tab")
    driver.get(url)
    return str(driver.current_window_handle)


def texts(driver: Any, selector: str) -> list[str]:
    return [e.get_attribute("textContent") for e in driver.find_elements(By.CSS_SELECTOR, selector)]


def chat(driver: Any, text: str, count: int | None = None) -> list[str]:
    """Send ``text`` from the current chat tab; the message texts once the bot has replied."""
    before = len(driver.find_elements(By.CSS_SELECTOR, "#messages .msg"))
    driver.execute_script("document.getElementById('text').value = arguments[0]", text)
    driver.find_element(By.ID, "send-button").click()
    wanted = before + 2 if count is None else count
    wait_for(
        driver,
        lambda: len(driver.find_elements(By.CSS_SELECTOR, "#messages .msg")) >= wanted,
        f"the bot's reply to {text!r}",
    )
    return texts(driver, "#messages .msg .text")


def sign_in(driver: Any, key: str) -> None:
    driver.find_element(By.ID, "key").send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "#sign-in button").click()


def console(driver: Any, server: Server, key: str = OPERATOR) -> str:
    tab = new_tab(driver, server.url + "/console")
    sign_in(driver, key)
    wait_for(
        driver, lambda: driver.find_elements(By.CSS_SELECTOR, "#intents tr[data-label]"), "intents"
    )
    return tab


def error_text(driver: Any) -> str:
    box = driver.find_element(By.ID, "error")
    return str(wait_for(driver, lambda: box.is_displayed() and box.text, "an error message"))


def pending_card(driver: Any, question: str) -> Any:
    def find() -> Any:
        for card in driver.find_elements(By.CSS_SELECTOR, ".pending"):
            if card.find_element(By.CSS_SELECTOR, ".quote").text == question:
                return card
        return None

    return wait_for(driver, find, f"{question!r} in the operator's queue")


def fill(driver: Any, element: Any, value: str) -> None:
    driver.execute_script("arguments[0].value = arguments[1]", element, value)


def figure(driver: Any, name: str) -> float:
    """A figure beside the chart, as shown (``dd.<name>``)."""
    (shown,) = texts(driver, f"#figures dd.{name}")
    return float(shown)


def conversation_card(driver: Any, question: str) -> Any:
    def find() -> Any:
        for card in driver.find_elements(By.CSS_SELECTOR, "#conversations .conversation"):
            if question in texts(card, ".log .text"):
                return card
        return None

    return wait_for(driver, find, f"the conversation of {question!r} in the operator's queue")


def intent_count(server: Server, label: str) -> int:
    classes = ok(server.client(OPERATOR).get("/v1/classes"))["classes"]
    return next((c["count"] for c in classes if c["label"] == label), 0)


# --- the scenarios -------------------------------------------------------------------------------------
def test_a_new_topic_is_handed_over_taught_and_answered(
    browser: Any, server: Server, shots: Path
) -> None:
    customer = new_tab(browser, f"{server.url}/chat#key={READER}")
    said = chat(browser, NEW_TOPIC)
    assert said[-2:] == [NEW_TOPIC, "Let me bring in a colleague."]
    operator = console(browser, server)
    card = pending_card(browser, NEW_TOPIC)
    answer = "You can open an account from the age of 18."
    fill(browser, card.find_element(By.NAME, "label"), "age_limit")
    fill(browser, card.find_element(By.NAME, "answer"), answer)
    browser.save_screenshot(str(shots / "console-before-teaching.png"))
    card.find_element(By.CSS_SELECTOR, "button.teach").click()
    wait_for(
        browser,
        lambda: "age_limit" in texts(browser, "#intents td.label"),
        "the new intent among the intents",
    )
    row = browser.find_element(By.CSS_SELECTOR, "#intents tr[data-label='age_limit']")
    assert row.find_element(By.CSS_SELECTOR, ".examples").text == "1"
    # The first customer sees the operator's answer in the chat.
    browser.switch_to.window(customer)
    wait_for(browser, lambda: texts(browser, "#messages .msg.operator .text") == [answer], "answer")
    browser.save_screenshot(str(shots / "chat-handed-over.png"))
    # A second customer, asking in other words, gets the new reply from the bot.
    new_tab(browser, f"{server.url}/chat#key={READER}")
    assert chat(browser, NEW_TOPIC_AGAIN)[-1] == answer
    assert texts(browser, "#messages .msg.bot .text") == [answer]
    browser.switch_to.window(operator)
    assert intent_count(server, "age_limit") == 1
    # The figures beside the chart are the service's counters (120 taught at the start + 1).
    learned = ok(server.client(OPERATOR).get("/v1/desk/stats"))["learned"]
    wait_for(
        browser,
        lambda: texts(browser, "#figures dd.examples-learned") == [f"{learned:.0f}"],
        "the examples learned among the figures",
    )
    assert learned == 121
    # The second customer's message came after sign-in: a fresh sample counts it per minute.
    wait_for(browser, lambda: figure(browser, "predictions-per-minute") > 0, "predictions/min")
    assert 0.0 <= figure(browser, "unknown-rate") <= 1.0
    assert figure(browser, "version-lag") >= 0
    browser.save_screenshot(str(shots / "console-after-teaching.png"))


def test_forget_an_intent_and_its_questions_are_handed_over_again(
    browser: Any, server: Server
) -> None:
    question = next(q for q, label in KNOWN.items() if label == "change_pin")
    new_tab(browser, f"{server.url}/chat#key={READER}")
    assert chat(browser, question)[-1] == "I can help with that: change pin."
    console(browser, server)
    forget = browser.find_element(By.CSS_SELECTOR, "#intents tr[data-label='change_pin'] .forget")
    forget.click()
    browser.switch_to.alert.dismiss()  # asked first; "no" keeps the intent
    assert intent_count(server, "change_pin") == 20
    forget.click()
    browser.switch_to.alert.accept()
    wait_for(browser, lambda: "change_pin" not in texts(browser, "#intents td.label"), "forgotten")
    assert intent_count(server, "change_pin") == 0
    new_tab(browser, f"{server.url}/chat#key={READER}")
    assert chat(browser, question)[-1] == "Let me bring in a colleague."


def test_a_wrong_key_is_refused_and_a_read_key_cannot_teach(browser: Any, server: Server) -> None:
    new_tab(browser, server.url + "/console")
    sign_in(browser, "not-a-key")
    assert error_text(browser) == "unknown API key"
    assert not browser.find_element(By.ID, "desk").is_displayed()
    console(browser, server, key=READER)
    box = browser.find_element(By.ID, "queue-error")
    wait_for(browser, lambda: "'read' role" in box.text, "the queue's refusal")
    assert box.text == "this key has the 'read' role; this needs 'write'"
    row = browser.find_element(By.CSS_SELECTOR, "#intents tr[data-label='card_arrival']")
    fill(browser, row.find_element(By.NAME, "reply"), "Changed by a reader")
    row.find_element(By.CSS_SELECTOR, ".save-reply").click()
    assert error_text(browser) == "this key has the 'read' role; this needs 'write'"
    intents = ok(server.client(OPERATOR).get("/v1/desk/intents"))["intents"]
    assert next(i for i in intents if i["label"] == "card_arrival")["custom"] is False
    # A read key may still try a message: the prediction, its novelty and the alternatives.
    question, intent = next(iter(KNOWN.items()))
    fill(browser, browser.find_element(By.ID, "try-text"), question)
    browser.find_element(By.CSS_SELECTOR, "#try button").click()
    verdict = wait_for(browser, lambda: texts(browser, "#try-result .verdict"), "the verdict")
    assert verdict[0].startswith(f"intent {intent} (score ")
    assert len(texts(browser, "#try-result .alternatives li")) == 5
    assert texts(browser, "#try-result .novelty")[0].startswith("novelty 0.")


def test_the_operator_answers_assigns_an_existing_intent_and_hands_back(
    browser: Any, server: Server
) -> None:
    question = "Is there a branch in Lisbon where I could talk to someone in person?"
    customer = new_tab(browser, f"{server.url}/chat#key={READER}")
    assert chat(browser, question)[-1] == "Let me bring in a colleague."
    operator = console(browser, server)
    talk = conversation_card(browser, question)
    talk_id = talk.get_attribute("data-id")
    # "Send": the operator's answer reaches the customer's chat.
    answer = "Our nearest branch is in Porto; a colleague can call you instead."
    fill(browser, talk.find_element(By.CSS_SELECTOR, ".row input[name='reply']"), answer)
    talk.find_element(By.CSS_SELECTOR, "button.send-answer").click()
    browser.switch_to.window(customer)
    wait_for(browser, lambda: texts(browser, "#messages .msg.operator .text") == [answer], "answer")
    # Assign an existing intent: it gains one example, and no new intent appears.
    browser.switch_to.window(operator)
    before = intent_count(server, "lost_or_stolen_card")
    card = pending_card(browser, question)
    fill(browser, card.find_element(By.NAME, "label"), "lost_or_stolen_card")
    card.find_element(By.CSS_SELECTOR, "button.teach").click()
    examples = "#intents tr[data-label='lost_or_stolen_card'] .examples"
    wait_for(browser, lambda: texts(browser, examples) == [str(before + 1)], "one more example")
    assert intent_count(server, "lost_or_stolen_card") == before + 1
    assert not browser.find_element(By.ID, "error").is_displayed()
    # "Hand back to the bot": the conversation leaves the queue; the bot answers it again.
    conversation_card(browser, question).find_element(By.CSS_SELECTOR, "button.close").click()
    wait_for(
        browser,
        lambda: (
            talk_id
            not in [
                c.get_attribute("data-id")
                for c in browser.find_elements(By.CSS_SELECTOR, ".conversation")
            ]
        ),
        "the conversation out of the queue",
    )
    operator_client = server.client(OPERATOR)
    assert ok(operator_client.get(f"/v1/chat/{talk_id}"))["handed_over"] is False
    browser.switch_to.window(customer)
    known = next(q for q, label in KNOWN.items() if label == "exchange_rate")
    assert chat(browser, known)[-1] == "I can help with that: exchange rate."
    # "Discard": another question leaves the queue without teaching anything.
    discarded = "What time do you open on public holidays?"
    new_tab(browser, f"{server.url}/chat#key={READER}")
    assert chat(browser, discarded)[-1] == "Let me bring in a colleague."
    browser.switch_to.window(operator)
    learned = ok(operator_client.get("/v1/desk/stats"))["learned"]
    card = pending_card(browser, discarded)
    item_id = card.get_attribute("data-id")
    card.find_element(By.CSS_SELECTOR, "button.discard").click()
    wait_for(browser, lambda: discarded not in texts(browser, ".pending .quote"), "discarded")
    assert item_id not in [i["id"] for i in ok(operator_client.get("/v1/review"))["items"]]
    assert ok(operator_client.get("/v1/desk/stats"))["learned"] == learned
    # "Save reply": saved with the model, and the next customer gets it.
    reply = "If your top-up failed, please try again in a few minutes."
    row = browser.find_element(By.CSS_SELECTOR, "#intents tr[data-label='top_up_failed']")
    fill(browser, row.find_element(By.NAME, "reply"), reply)
    row.find_element(By.CSS_SELECTOR, ".save-reply").click()
    saved = wait_for(
        browser,
        lambda: next(
            (
                i
                for i in ok(operator_client.get("/v1/desk/intents"))["intents"]
                if i["label"] == "top_up_failed" and i["custom"]
            ),
            None,
        ),
        "the reply saved",
    )
    assert saved["reply"] == reply
    assert not browser.find_element(By.ID, "error").is_displayed()
    texts_, labels = banking(20)
    question = next(  # one it learned and calls top_up_failed (some fall under unknown_rate)
        t
        for t, label in zip(texts_, labels, strict=True)
        if label == "top_up_failed"
        and ok(operator_client.post("/v1/desk/try", json={"text": t}))["prediction"]["label"]
        == "top_up_failed"
    )
    new_tab(browser, f"{server.url}/chat#key={READER}")
    assert chat(browser, question)[-1] == reply


# --- bad input -----------------------------------------------------------------------------------------
def test_html_is_shown_as_text_and_never_run(browser: Any, server: Server) -> None:
    message = '<img src=x onerror="window.pwned=1"><b>bold?</b> <script>window.pwned=2</script>'
    new_tab(browser, f"{server.url}/chat#key={READER}")
    fill(browser, browser.find_element(By.ID, "text"), "   ")
    browser.find_element(By.ID, "send-button").click()
    assert error_text(browser) == "Please type a message first."
    said = chat(browser, message)
    assert said[-2] == message
    assert (
        browser.find_elements(By.CSS_SELECTOR, "#messages img, #messages b, #messages script") == []
    )
    assert browser.execute_script("return window.pwned === undefined")
    # The operator sees it as text too, and may name an intent with markup in it.
    console(browser, server)
    card = pending_card(browser, message)
    label = "<b>vip</b>"
    fill(browser, card.find_element(By.NAME, "label"), label)
    card.find_element(By.CSS_SELECTOR, "button.teach").click()
    wait_for(browser, lambda: label in texts(browser, "#intents td.label"), "the new intent")
    assert browser.find_elements(By.CSS_SELECTOR, "#queue-panel img, #intents b") == []
    assert browser.execute_script("return window.pwned === undefined")


def test_a_review_item_sent_from_two_tabs_is_learned_once(browser: Any, server: Server) -> None:
    question = "Do you sell travel insurance for skiing holidays?"
    new_tab(browser, f"{server.url}/chat#key={READER}")
    assert chat(browser, question)[-1] == "Let me bring in a colleague."
    first = console(browser, server)
    second = console(browser, server)
    fill(browser, pending_card(browser, question).find_element(By.NAME, "label"), "insurance")
    browser.switch_to.window(first)
    card = pending_card(browser, question)
    fill(browser, card.find_element(By.NAME, "label"), "insurance")
    card.find_element(By.CSS_SELECTOR, "button.teach").click()
    wait_for(browser, lambda: "insurance" in texts(browser, "#intents td.label"), "the new intent")
    browser.switch_to.window(second)
    card = pending_card(browser, question)  # kept, since the operator typed into it
    wait_for(browser, lambda: card.find_elements(By.CSS_SELECTOR, ".gone"), "the item gone")
    card.find_element(By.CSS_SELECTOR, "button.teach").click()
    assert "labelled or discarded already" in error_text(browser)
    assert intent_count(server, "insurance") == 1


@pytest.mark.parametrize(
    ("label", "message"),
    [
        ("   ", "label is blank ('   '); expected a class name"),
        ("x" * 10_000, "label has 10000 characters, over the limit of 200 (max_label_chars)"),
    ],
    ids=["blank", "10000-characters"],
)
def test_bad_labels_are_refused_with_the_apis_message(
    browser: Any, server: Server, label: str, message: str
) -> None:
    question = f"Can I pay my rent with bitcoin {len(label)}?"
    new_tab(browser, f"{server.url}/chat#key={READER}")
    assert chat(browser, question)[-1] == "Let me bring in a colleague."
    console(browser, server)
    card = pending_card(browser, question)
    fill(browser, card.find_element(By.NAME, "label"), label)
    card.find_element(By.CSS_SELECTOR, "button.teach").click()
    error = error_text(browser)
    assert message in error
    refusal = server.client(OPERATOR).post(
        f"/v1/desk/review/{card.get_attribute('data-id')}", json={"label": label}
    )
    assert refusal.json()["error"] == error  # shown as the API words it
    assert pending_card(browser, question).is_displayed()  # still waiting: nothing learned


def test_a_lost_connection_and_a_restart_lose_nothing(
    browser: Any, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A customer waits for the operator (handed over); another talks with the bot only.
    waiting = "Can I bring my dog into the branch with me?"
    handed = new_tab(browser, f"{server.url}/chat#key={READER}")
    assert chat(browser, waiting)[-1] == "Let me bring in a colleague."
    operator = console(browser, server)
    item_id = pending_card(browser, waiting).get_attribute("data-id")
    plain = new_tab(browser, f"{server.url}/chat#key={READER}")
    first = next(iter(KNOWN))
    assert chat(browser, first)[-1] == "I can help with that: exchange rate."
    client = server.client(OPERATOR)
    reply = "Cards arrive within five working days."
    ok(client.put("/v1/desk/replies/card_arrival", json={"text": reply}))
    texts_, labels = banking(20)
    card_question = texts_[labels.index("card_arrival")]  # a text it learned: known for sure
    talk = ok(server.client(READER).post("/v1/chat", json={"text": first}))["conversation"]
    server.stop()
    status = browser.find_element(By.ID, "status")
    wait_for(browser, lambda: "Connection lost" in status.text, "the lost connection shown")
    # A message sent while the service is down is kept in the box, with a visible message.
    browser.execute_script("document.getElementById('text').value = 'still there?'")
    browser.find_element(By.ID, "send-button").click()
    assert "not sent" in error_text(browser)
    assert browser.find_element(By.ID, "text").get_attribute("value") == "still there?"
    # The console says the connection is lost too.
    browser.switch_to.window(operator)
    assert error_text(browser).startswith("Connection lost: the service did not answer")
    port = server.port
    monkeypatch.setattr(test_service_support, "free_port", lambda: port)
    server.start()
    # The console polls again: the error goes, and the waiting question is still there.
    box = browser.find_element(By.ID, "error")
    wait_for(browser, lambda: not box.is_displayed(), "the console's error gone")
    assert item_id in [i["id"] for i in ok(server.client(OPERATOR).get("/v1/review"))["items"]]
    assert pending_card(browser, waiting).get_attribute("data-id") == item_id
    answer = "Dogs are welcome in all our branches."
    talk_card = conversation_card(browser, waiting)
    fill(browser, talk_card.find_element(By.CSS_SELECTOR, ".row input[name='reply']"), answer)
    talk_card.find_element(By.CSS_SELECTOR, "button.send-answer").click()
    card = pending_card(browser, waiting)
    fill(browser, card.find_element(By.NAME, "label"), "pets_in_branch")
    card.find_element(By.CSS_SELECTOR, "button.teach").click()
    wait_for(browser, lambda: "pets_in_branch" in texts(browser, "#intents td.label"), "taught")
    assert intent_count(server, "pets_in_branch") == 1
    # The handed-over customer's page kept its conversation and sees the operator's answer.
    browser.switch_to.window(handed)
    wait_for(browser, lambda: texts(browser, "#messages .msg.operator .text") == [answer], "answer")
    assert texts(browser, "#messages .msg .text")[:2] == [waiting, "Let me bring in a colleague."]
    assert not browser.find_element(By.ID, "status").is_displayed()
    # The other conversation is gone with the restart: the page says so and starts a new one.
    browser.switch_to.window(plain)
    status = browser.find_element(By.ID, "status")
    said = chat(browser, card_question, count=4)
    assert said[:2] == [first, "I can help with that: exchange rate."]  # nothing lost
    assert "restarted" in status.text
    assert said[2:] == [card_question, reply]  # the reply was saved with the model
    gone = server.client(READER).get(f"/v1/chat/{talk}")
    assert gone.status_code == 404 and "the service restarted" in gone.json()["error"]
