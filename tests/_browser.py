"""Headless Chromium for the arena's browser test and README screenshot (Selenium + chromedriver).

A test helper, not part of the library: tests/test_arena_browser.py imports it as `_browser`, and
scripts/screenshot_arena.py puts tests/ on sys.path to do the same.

Uses the system's Chromium and its matching chromedriver (Debian: `apt-get install chromium
chromium-driver`), never a downloaded browser: the driver path is given explicitly so Selenium
Manager does not try to fetch one. `STEERLENS_CHROMIUM` / `STEERLENS_CHROMEDRIVER` override the
paths. `selenium` is in the `dev` extra, imported only when a browser is asked for.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

CHROME_ARGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--no-first-run", "--disable-extensions", "--mute-audio")


def _find(env: str, names: tuple[str, ...]) -> str | None:
    if os.environ.get(env):
        return os.environ[env] if os.path.isfile(os.environ[env]) else None
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


def browser_problem() -> str | None:
    """Why a headless browser cannot be started here, or None when it can."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "the selenium package is not installed (pip install -e '.[dev]')"
    if _find("STEERLENS_CHROMIUM", ("chromium", "chromium-browser", "google-chrome")) is None:
        return "no Chromium binary found (apt-get install chromium)"
    if _find("STEERLENS_CHROMEDRIVER", ("chromedriver",)) is None:
        return "no chromedriver found (apt-get install chromium-driver)"
    return None


def chrome(width: int = 1400, height: int = 1000):
    """A headless Chromium WebDriver; the caller must `quit()` it."""
    problem = browser_problem()
    if problem:
        raise RuntimeError(f"Cannot start a headless browser: {problem}.")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = _find("STEERLENS_CHROMIUM", ("chromium", "chromium-browser",
                                                        "google-chrome"))
    for arg in CHROME_ARGS:
        opts.add_argument(arg)
    opts.add_argument(f"--window-size={width},{height}")
    service = Service(executable_path=_find("STEERLENS_CHROMEDRIVER", ("chromedriver",)))
    return webdriver.Chrome(options=opts, service=service)


def wait_for_state(driver, states: tuple[str, ...], timeout: float = 60.0) -> str:
    """Wait until the page's status line is in one of `states` (idle/running/done/error...)."""
    from selenium.webdriver.support.ui import WebDriverWait

    def state(d):
        value = d.find_element("id", "status").get_attribute("data-state")
        return value if value in states else False

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(state)


def fill(driver, element_id: str, value: str) -> None:
    """Replace the value of an input/textarea/select by id."""
    elem = driver.find_element("id", element_id)
    if elem.tag_name == "select":
        from selenium.webdriver.support.ui import Select

        Select(elem).select_by_value(value)
    else:
        elem.clear()
        elem.send_keys(value)


def run_steering(driver, url: str, *, behaviour: str, layer: int, strengths: str, prompt: str,
                 max_new_tokens: int, timeout: float = 120.0) -> str:
    """Load the page, fill the form, click Steer and wait for the run to end; returns the state."""
    driver.get(url)
    wait_for_state(driver, ("idle",), timeout=30)
    fill(driver, "behaviour", behaviour)
    fill(driver, "layer", str(layer))
    fill(driver, "strengths", strengths)
    fill(driver, "prompt", prompt)
    fill(driver, "max-new-tokens", str(max_new_tokens))
    driver.find_element("id", "run").click()
    return wait_for_state(driver, ("done", "error"), timeout=timeout)


def screenshot(driver, path: str | Path) -> Path:
    """Save a PNG of the whole page, beyond the viewport (Chromium DevTools capture)."""
    import base64

    from steerlens.io import atomic_write_bytes

    width, height = driver.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": int(width), "height": int(height), "scale": 1}})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(path, base64.b64decode(shot["data"]))
