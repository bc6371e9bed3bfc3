"""Screenshot of the steering arena after a real steered generation, for the README.

Starts the arena on the embedded model in this process, drives it with the same headless Chromium
setup as tests/test_arena_browser.py (tests/_browser.py), runs one generation with the
baseline and two strengths, and writes a PNG (default docs/arena.png).

    python scripts/screenshot_arena.py [--model smollm2-135m-instruct] [--out docs/arena.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from steerlens.arena.engine import Arena
from steerlens.arena.server import make_server, start_in_thread
from steerlens.backend import DEFAULT_MODEL, load_model

# the Selenium helper is a test helper (tests/_browser.py), not part of the installed package
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import _browser as browser  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--device", default="cpu")
    p.add_argument("--behaviour", default="sentiment")
    p.add_argument("--layer", type=int, default=6)
    p.add_argument("--strengths", default="4, 8")
    p.add_argument("--prompt", default="Tell me about your weekend.")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--out", default="docs/arena.png")
    args = p.parse_args(argv)

    problem = browser.browser_problem()
    if problem:
        print(f"screenshot_arena: {problem}", file=sys.stderr)
        return 2
    model = load_model(args.model, device=args.device)
    server = make_server(Arena(model, args.model), "127.0.0.1", 0)
    start_in_thread(server)
    driver = browser.chrome(width=1400, height=900)
    try:
        state = browser.run_steering(driver, server.url, behaviour=args.behaviour,
                                     layer=args.layer, strengths=args.strengths,
                                     prompt=args.prompt, max_new_tokens=args.max_new_tokens,
                                     timeout=600)
        if state != "done":
            print(f"screenshot_arena: the run ended in {state!r}: "
                  f"{driver.find_element('id', 'error').text}", file=sys.stderr)
            return 1
        texts = [e.text for e in driver.find_elements("css selector", ".pane .text")]
        path = browser.screenshot(driver, args.out)
    finally:
        driver.quit()
        server.shutdown()
        server.server_close()
    for label, text in zip(["baseline", *args.strengths.split(",")], texts):
        print(f"[{label.strip()}] {text!r}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
