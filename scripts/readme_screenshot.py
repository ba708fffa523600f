"""The README's screenshot: the shipped default, random against low_confidence in blocks, replayed to step 24.

    storydiff serve --port 8765 &
    python scripts/readme_screenshot.py http://127.0.0.1:8765 docs/screenshot.png

Needs Chromium (.ci/setup-browser.sh; STORYDIFF_CHROMIUM to point elsewhere) and playwright (the dev extra).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from urllib.parse import urlencode

from playwright.sync_api import expect, sync_playwright

COMMON = {
    "prompt": "Once upon a time, a little fox",
    "length": "112",
    "steps": "48",
    "temperature": "0.8",
    "top_p": "0.9",
    "seed": "5",
}
PANELS = [{"remasking": "random", "block_length": ""}, {"remasking": "low_confidence", "block_length": "32"}]


def comparison_query() -> str:
    """The page's own URL format: `N.field` per panel, and `run` to start at once."""
    params = {f"{i}.{key}": value for i, extra in enumerate(PANELS, 1) for key, value in {**COMMON, **extra}.items()}
    return urlencode({**params, "run": "1"})


def take(url: str, output: str, replay_step: int) -> None:
    """Open the comparison, wait for both stories, replay both to `replay_step` and save a full-page PNG."""
    chromium = os.environ.get("STORYDIFF_CHROMIUM", "/usr/bin/chromium")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tempfile.mkdtemp(prefix="storydiff-shot-"),
            executable_path=chromium,
            headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu"],
            viewport={"width": 1440, "height": 900},
        )
        page = context.new_page()
        page.goto(f"{url}/?{comparison_query()}")
        panels = page.locator("section.panel")
        expect(panels).to_have_count(len(PANELS))
        for i in range(len(PANELS)):
            expect(panels.nth(i).locator("[data-ref=final]")).to_be_visible(timeout=300_000)
        for i in range(len(PANELS)):
            panels.nth(i).get_by_label("Replay the denoising").fill(str(replay_step))
        page.evaluate("document.activeElement.blur()")  # no focus ring in the picture
        page.screenshot(path=output, full_page=True)
        context.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", help="a running storydiff server")
    parser.add_argument("output", help="where to write the PNG")
    parser.add_argument("--replay-step", type=int, default=24, help="the step both panels show")
    args = parser.parse_args()
    take(args.url, args.output, args.replay_step)


if __name__ == "__main__":
    main()
