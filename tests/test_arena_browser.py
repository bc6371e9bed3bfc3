"""The arena in a real headless Chromium (Selenium + the system chromedriver) on the embedded model:
load the page, run one steered generation, check both panes and the KL view are filled, and check
that a bad layer shows its error in the page. Skips when no browser is installed, unless
STEERLENS_REQUIRE_BROWSER=1 (CI), where a missing browser is a failure."""

from __future__ import annotations

import os

import _browser as browser
import pytest

from steerlens.arena.engine import Arena
from steerlens.arena.server import make_server, start_in_thread

pytestmark = pytest.mark.embedded


@pytest.fixture(scope="module")
def driver():
    problem = browser.browser_problem()
    if problem:
        if os.environ.get("STEERLENS_REQUIRE_BROWSER") == "1":
            pytest.fail(f"STEERLENS_REQUIRE_BROWSER=1 but {problem}")
        pytest.skip(f"no headless browser: {problem}")
    d = browser.chrome()
    yield d
    d.quit()


@pytest.fixture(scope="module")
def url(smol):
    srv = make_server(Arena(smol, "smollm2-135m-instruct"), "127.0.0.1", 0)
    start_in_thread(srv)
    yield srv.url
    srv.shutdown()
    srv.server_close()


def hooks(model) -> int:
    return sum(len(h._forward_hooks) + len(h._backward_hooks) for h in model.hook_dict.values())


def test_steered_generation_in_browser(driver, url, smol):
    state = browser.run_steering(driver, url, behaviour="sentiment", layer=6, strengths="8",
                                 prompt="Tell me about your weekend.", max_new_tokens=10)
    assert state == "done", driver.find_element("id", "error").text
    assert "smollm2" in driver.find_element("id", "model-name").text
    base = driver.find_element("id", "text-0").text
    steered = driver.find_element("id", "text-1").text
    assert base.strip() and steered.strip()
    assert base != steered
    tokens = driver.find_elements("css selector", "#kl-1 .tok")
    assert tokens and all(t.get_attribute("data-bits") for t in tokens)
    assert float(tokens[-1].get_attribute("data-bits")) > 0
    assert len(driver.find_elements("css selector", "#lens-promoted li")) == 12
    assert not driver.find_element("id", "error").is_displayed()
    assert hooks(smol) == 0


def test_bad_layer_shows_error_in_page(driver, url, smol):
    state = browser.run_steering(driver, url, behaviour="sentiment", layer=999, strengths="8",
                                 prompt="Hello", max_new_tokens=5)
    assert state == "error"
    box = driver.find_element("id", "error")
    assert box.is_displayed()
    assert "Layer 999 is out of range" in box.text and "0..29" in box.text
    assert hooks(smol) == 0
