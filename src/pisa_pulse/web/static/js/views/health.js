// The source-health strip: per country database, its capture state and lag, from /api/status.
// Every state has its own symbol and word, so colour is never the only sign.

import { countryName } from "../catalog.js";
import { ContractError, formatAge } from "../poller.js";

const STATES = {
  streaming: { symbol: "●", tone: "ok" },
  polling: { symbol: "◆", tone: "ok" },
  direct: { symbol: "●", tone: "ok" },
  copying: { symbol: "◐", tone: "info" },
  reconnecting: { symbol: "▲", tone: "amber" },
  failed: { symbol: "✕", tone: "red" },
};
const format = new Intl.NumberFormat("en");

export class HealthView {
  constructor(root, onCountries) {
    this.summary = root.querySelector(".health-summary");
    this.list = root.querySelector(".health-list");
    this.onCountries = onCountries;
    this.items = new Map(); // source -> its <li>, reused every second
  }

  render(body) {
    const sources = body?.sources;
    if (!Array.isArray(sources)) throw new ContractError("no sources list");
    const seen = new Set();
    let healthy = 0;
    let worstLag = null;
    for (const source of sources) {
      const name = String(source?.source ?? source?.name ?? "?");
      const state = String(source?.state ?? "unknown");
      const look = STATES[state] ?? { symbol: "?", tone: "info" };
      if (look.tone === "ok") healthy += 1;
      const lag = Number.isFinite(source.lag_ms) ? source.lag_ms : null;
      if (lag !== null) worstLag = Math.max(worstLag ?? 0, lag);
      seen.add(name);
      const item = this.item(name);
      const code = name.toUpperCase();
      const detail = look.tone === "ok" ? (lag === null ? "–" : formatAge(lag)) : state;
      update(item, "data-tone", look.tone);
      update(item.querySelector(".state-symbol"), "text", look.symbol);
      update(item.querySelector(".detail"), "text", detail);
      update(item.querySelector(".state-word"), "text", look.tone === "ok" ? `${state}, lag` : "");
      const rows = Number.isFinite(source.rows) ? `, ${format.format(source.rows)} rows` : "";
      const reason = source.reason ? ` (${source.reason})` : "";
      const lagText = lag === null ? "" : `, lag ${formatAge(lag)}`;
      update(item, "title", `${countryName(code)}: ${state}${reason}${lagText}${rows}`);
    }
    for (const [name, item] of this.items) {
      if (!seen.has(name)) {
        item.remove();
        this.items.delete(name);
      }
    }
    this.order();
    const lagText = worstLag === null ? "" : ` · max lag ${formatAge(worstLag)}`;
    const mode = body.mode ? ` · ${body.mode}` : "";
    update(this.summary, "text", `${healthy}/${sources.length} sources healthy${lagText}${mode}`);
    this.summary.dataset.tone = healthy === sources.length && sources.length > 0 ? "ok" : "amber";
    this.onCountries([...seen].map((n) => n.toUpperCase()).filter((c) => /^[A-Z]{3}$/.test(c)));
  }

  item(name) {
    let item = this.items.get(name);
    if (!item) {
      item = document.createElement("li");
      item.className = "source";
      const symbol = document.createElement("span");
      symbol.className = "state-symbol";
      symbol.setAttribute("aria-hidden", "true");
      const code = document.createElement("span");
      code.className = "code";
      code.textContent = name.toUpperCase();
      const word = document.createElement("span"); // what the symbol says, for screen readers
      word.className = "state-word visually-hidden";
      const detail = document.createElement("span");
      detail.className = "detail";
      item.append(symbol, code, word, detail);
      this.items.set(name, item);
      this.list.append(item);
    }
    return item;
  }

  /** Sources in trouble first (visible without scrolling a long strip), then by code. */
  order() {
    const rank = (item) => (item.dataset.tone === "ok" ? 1 : 0);
    const wanted = [...this.items.values()].sort(
      (a, b) =>
        rank(a) - rank(b) ||
        a.querySelector(".code").textContent.localeCompare(b.querySelector(".code").textContent),
    );
    if (wanted.some((item, i) => this.list.children[i] !== item)) this.list.append(...wanted);
  }
}

/** Writes only what changed: a strip refreshed every second should not churn the DOM. */
function update(el, what, value) {
  if (what === "text") {
    if (el.textContent !== value) el.textContent = value;
  } else if (what === "title") {
    if (el.title !== value) el.title = value;
  } else if (el.getAttribute(what) !== value) {
    el.setAttribute(what, value);
  }
}
