// A per-country trend under a chart: one sparkline per country over the 24 hours to the minute shown,
// hour by hour, from the history's series (GET api/history/<chart>?from=&to=&step=1h). Asked at most
// once a minute while live (and again when the countries change), once for a past minute. Hidden
// when the server keeps no history or the series route does not answer with one.

import { countryName } from "./catalog.js";
import { ContractError, fetchOnce } from "./poller.js";
import { formatMinute, isoMinute, msOf } from "./time.js";
import { codeOf, datasetsOf } from "./views/base.js";

const MINUTE_MS = 60_000;
const HOURS = 24;
const EVERY_MS = 60_000; // live: asked again once a minute (a new hourly point at most every hour)
const DEBOUNCE_MS = 400; // the picker's clicks: one question for a burst
const WIDTH = 64;
const HEIGHT = 18;

export class TrendStrip {
  /**
   * @param {HTMLElement} card  the chart's card
   * @param {{key: string, what: string, digits: number, minRange: number}} spec  which value of a
   *   point to draw (`key`), what it is (for the tooltips) and how to show it
   * @param {(from: string, to: string) => (string|null)} urlOf  the series' URL for the 24 hours from
   *   `from` to `to` (null: nothing to ask, e.g. no country selected)
   */
  constructor(card, spec, urlOf) {
    this.spec = spec;
    this.urlOf = urlOf;
    this.at = null; // the minute shown; null: live
    this.enabled = false; // the server keeps history
    this.paused = false;
    this.askedAt = -Infinity; // performance.now() of the last question
    this.timer = null;
    this.token = 0;
    this.items = new Map(); // code -> its <li>, reused at every answer
    const id = `trend-${card.dataset.feed}`;
    this.root = document.createElement("section");
    this.root.className = "trend";
    this.root.hidden = true;
    this.root.setAttribute("aria-labelledby", id);
    this.title = document.createElement("p");
    this.title.className = "trend-title";
    this.title.id = id;
    this.list = document.createElement("ul");
    this.list.className = "trend-list";
    this.list.tabIndex = 0; // it scrolls past two rows
    this.list.setAttribute("aria-labelledby", id);
    this.root.append(this.title, this.list);
    card.querySelector(".card-source").before(this.root);
  }

  /** Whether the server keeps history (from /api/status): nothing is asked before. */
  enable(on) {
    if (on === this.enabled) return;
    this.enabled = on;
    if (on) this.refresh();
    else this.hide();
  }

  /** The minute shown changed (null: live). */
  show(at) {
    this.at = at;
    this.refresh();
  }

  /** The countries changed: ask again, once for a burst of changes. */
  countriesChanged() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.refresh(), DEBOUNCE_MS);
  }

  /** A hidden tab asks nothing; back in view, a live trend older than a minute is asked again. */
  pause(hidden) {
    this.paused = hidden;
    clearTimeout(this.timer);
    if (!hidden && this.at === null) this.schedule(Math.max(0, this.askedAt + EVERY_MS - performance.now()));
  }

  schedule(wait) {
    clearTimeout(this.timer);
    if (this.enabled && !this.paused) this.timer = setTimeout(() => this.refresh(), wait);
  }

  async refresh() {
    clearTimeout(this.timer);
    const token = ++this.token;
    if (!this.enabled || this.paused) return;
    // Live: the 24 hours to the last whole minute (the history writes a minute once it has ended).
    const to = this.at ?? isoMinute(Date.now() - MINUTE_MS);
    const from = isoMinute(msOf(to) - HOURS * 60 * MINUTE_MS);
    const url = this.urlOf(from, to);
    if (url === null) {
      this.hide();
      return;
    }
    this.askedAt = performance.now();
    const answer = await fetchOnce(url);
    if (token !== this.token) return; // asked again meanwhile
    let drawn = false;
    if (answer.ok) {
      try {
        drawn = this.draw(answer.body, from, to);
      } catch (error) {
        if (!(error instanceof ContractError)) console.error(error);
      }
    }
    if (!drawn) this.hide(); // 404 (no minute in the window), 400 (no series route here), or no shape
    if (this.at === null) this.schedule(EVERY_MS);
  }

  hide() {
    this.root.hidden = true;
  }

  /** Draws the series' answer; false when it has nothing to draw. */
  draw(body, askedFrom, askedTo) {
    const from = Date.parse(body?.from ?? askedFrom);
    const to = Date.parse(body?.to ?? askedTo);
    if (!Number.isFinite(from) || !Number.isFinite(to) || to <= from)
      throw new ContractError("bad from or to");
    const { key, what } = this.spec;
    const seen = new Set();
    for (const dataset of datasetsOf(body)) {
      const code = codeOf(dataset.id);
      if (!Array.isArray(dataset.data)) throw new ContractError("a dataset has no data list");
      const points = dataset.data
        .map((point) => [Date.parse(point?.at), point?.[key]])
        .filter(([at, value]) => Number.isFinite(at) && typeof value === "number" && Number.isFinite(value))
        .sort((a, b) => a[0] - b[0]);
      if (points.length === 0) continue; // no valid value in the window: no line to draw
      seen.add(code);
      this.drawItem(this.item(code), code, points, from, to);
    }
    for (const [code, item] of this.items) {
      if (!seen.has(code)) {
        item.remove();
        this.items.delete(code);
      }
    }
    this.title.textContent = `Trend of ${what}, hour by hour, 24 hours to ${formatMinute(isoMinute(to))}`;
    this.root.hidden = seen.size === 0;
    return seen.size > 0;
  }

  item(code) {
    let item = this.items.get(code);
    if (!item) {
      item = document.createElement("li");
      item.dataset.code = code;
      const codeText = document.createElement("span");
      codeText.className = "code";
      codeText.textContent = code;
      codeText.setAttribute("aria-hidden", "true");
      const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
      svg.setAttribute("class", "trend-spark");
      svg.setAttribute("viewBox", `0 0 ${WIDTH} ${HEIGHT}`);
      svg.setAttribute("preserveAspectRatio", "none");
      svg.setAttribute("aria-hidden", "true");
      svg.setAttribute("focusable", "false");
      svg.append(document.createElementNS("http://www.w3.org/2000/svg", "polyline"));
      const value = document.createElement("span");
      value.className = "trend-value";
      value.setAttribute("aria-hidden", "true");
      const read = document.createElement("span"); // the line in words, for screen readers
      read.className = "visually-hidden";
      item.append(codeText, svg, value, read);
      this.items.set(code, item);
      // In the server's order of the answer (stable: only new countries are added).
      this.list.append(item);
    }
    return item;
  }

  drawItem(item, code, points, from, to) {
    const { what, digits, minRange } = this.spec;
    const values = points.map(([, value]) => value);
    const low = Math.min(...values);
    const high = Math.max(...values);
    // Each country on its own scale, but never finer than minRange: noise stays flat.
    const range = Math.max(high - low, minRange);
    const middle = (low + high) / 2;
    const coordinates = points.map(([at, value]) => {
      const x = ((at - from) / (to - from)) * WIDTH;
      const y = HEIGHT / 2 - ((value - middle) / range) * (HEIGHT - 4);
      return `${x.toFixed(1)},${y.toFixed(1)}`;
    });
    if (coordinates.length === 1) coordinates.push(`${WIDTH},${coordinates[0].split(",")[1]}`);
    const line = item.querySelector("polyline");
    const drawn = coordinates.join(" ");
    if (line.getAttribute("points") !== drawn) line.setAttribute("points", drawn);
    const [firstAt, first] = points[0];
    const [lastAt, last] = points.at(-1);
    const shown = last.toFixed(digits);
    const valueText = item.querySelector(".trend-value");
    if (valueText.textContent !== shown) valueText.textContent = shown;
    const summary =
      `${countryName(code)}: ${what} ${first.toFixed(digits)} at ${formatMinute(isoMinute(firstAt))}, ` +
      `${shown} at ${formatMinute(isoMinute(lastAt))} (${points.length} hourly points)`;
    if (item.title !== summary) item.title = summary;
    const read = item.querySelector(".visually-hidden");
    if (read.textContent !== summary) read.textContent = summary;
    const key = JSON.stringify(values);
    if (item.dataset.values !== key) item.dataset.values = key;
  }
}
