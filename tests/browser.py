"""Headless Chromium for the browser tests and the dashboard benchmark: Debian's `chromium` via Playwright."""

from __future__ import annotations

from urllib.parse import urlsplit

from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright

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


def history_miss(message: ConsoleMessage) -> bool:
    """Whether a console message is the browser logging a failed load of the server's history
    (`/api/history/...`): the dashboard asks for minutes and series that may not be there (404), or
    that a server may not serve (400), and says so on the page itself, so these are no page errors."""
    url = str((message.location or {}).get("url", ""))
    return message.text.startswith("Failed to load resource") and urlsplit(url).path.startswith(
        "/api/history/"
    )
