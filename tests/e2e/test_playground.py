"""The playground page in a real browser (headless Chromium through Selenium and the system
chromedriver) against the real app: pick an adapter, stream a chat answer next to the base's,
generate an image from a two-LoRA mix. Screenshots go to results/playground-*.png."""

import base64
import shutil
from pathlib import Path

import pytest

SHOTS = Path("results")


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,1000"):
        opts.add_argument(arg)
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    yield driver
    driver.quit()


def _wait(driver, predicate, timeout: float = 120):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: predicate(d))


def test_playground_streams_a_chat_and_draws_a_mix(browser, app_url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    SHOTS.mkdir(exist_ok=True)
    browser.get(f"{app_url}/playground")
    _wait(browser, lambda d: len(Select(d.find_element(By.ID, "chat-model")).options) > 1)
    Select(browser.find_element(By.ID, "chat-model")).select_by_value("tiny-llama:sql")
    browser.find_element(By.ID, "max-tokens").clear()
    browser.find_element(By.ID, "max-tokens").send_keys("24")
    browser.find_element(By.ID, "send").click()
    box = browser.find_element(By.ID, "answer-adapter")
    # Streaming: the answer appears in pieces before the stream is done.
    partial = _wait(browser, lambda d: box.find_element(By.TAG_NAME, "span").text or None)
    _wait(browser, lambda d: box.get_attribute("data-done") == "1")
    _wait(browser, lambda d: d.find_element(By.ID, "answer-base").get_attribute("data-done") == "1")
    meta = box.find_element(By.CLASS_NAME, "meta").text
    assert "tiny-llama:sql" in meta and "chunks" in meta and partial
    chunks = int(meta.split("·")[1].split()[0])
    assert chunks > 1  # arrived as several server-sent events
    base_label = browser.find_element(By.ID, "label-base").text
    assert base_label == "tiny-llama"
    browser.save_screenshot(str(SHOTS / "playground-chat.png"))

    Select(browser.find_element(By.ID, "image-model")).select_by_value("tiny-sd")
    Select(browser.find_element(By.ID, "lora-a")).select_by_value("style3d")
    Select(browser.find_element(By.ID, "lora-b")).select_by_value("cereal")
    browser.find_element(By.ID, "generate").click()
    img = _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#image img"))[0]
    png = base64.b64decode(img.get_attribute("src").split(",", 1)[1])
    assert png.startswith(b"\x89PNG")
    status = browser.find_element(By.ID, "image-status").text
    assert "style3d×0.5" in status and "cereal×0.5" in status
    browser.save_screenshot(str(SHOTS / "playground-image.png"))
