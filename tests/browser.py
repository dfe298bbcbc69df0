"""Headless Chromium for the browser tests and the dashboard benchmark: Debian's `chromium` via Playwright."""

from __future__ import annotations

from playwright.sync_api import Browser, Page, Playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-precise-memory-info",  # performance.memory in bytes, not rounded buckets
    "--js-flags=--expose-gc",  # window.gc(), so heap sizes compare live objects only
]


def launch(playwright: Playwright) -> Browser:
    """Chromium with the flags above."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def heap_bytes(page: Page) -> int:
    """The page's live JavaScript heap, after a full garbage collection."""
    used: int = page.evaluate("() => { window.gc(); return performance.memory.usedJSHeapSize; }")
    return used
