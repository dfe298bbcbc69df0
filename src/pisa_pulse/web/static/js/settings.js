// Bring-your-own endpoints: every chart's URL can point at any server that honours the chart
// contracts and allows cross-origin GET, and that this server's Content-Security-Policy lets the page
// reach (`server.chart_origins`). Saved in this browser's localStorage. The status strip always polls
// this server: /api/status is same-origin only.

const STORAGE_KEY = "pisa-pulse.endpoints.v1";

export class Endpoints {
  /** @param {{id: string, title: string, path: string}[]} feeds  the defaults: this server's paths */
  constructor(feeds) {
    this.feeds = feeds;
    this.custom = load();
  }

  /** The URL a feed polls (a path on this server unless configured otherwise). */
  url(id) {
    return this.custom[id] ?? this.feeds.find((f) => f.id === id).path;
  }

  /** The host of a configured foreign URL, or null for this server. */
  foreignHost(id) {
    const url = new URL(this.url(id), location.href);
    return url.origin === location.origin ? null : url.host;
  }

  /** Saves {id: url}; a blank or default URL goes back to this server's. Returns the ids changed. */
  save(urls) {
    const before = { ...this.custom };
    const next = {};
    for (const feed of this.feeds) {
      const url = (urls[feed.id] ?? "").trim();
      if (url && url !== feed.path) next[feed.id] = url;
    }
    this.custom = next;
    try {
      localStorage.setItem(STORAGE_KEY, JSON.stringify(next));
    } catch {
      // storage refused (private mode, quota): the URLs still apply until the page closes
    }
    return this.feeds.map((f) => f.id).filter((id) => before[id] !== next[id]);
  }
}

function load() {
  try {
    const saved = JSON.parse(localStorage.getItem(STORAGE_KEY) ?? "{}");
    return saved && typeof saved === "object" ? saved : {};
  } catch {
    return {};
  }
}

/** A URL the page can poll: absolute http(s), or a path on this server. */
export function checkUrl(text) {
  if (!text.trim()) return null;
  try {
    const url = new URL(text.trim(), location.href);
    return url.protocol === "http:" || url.protocol === "https:" ? null : "use an http:// or https:// URL";
  } catch {
    return "not a URL";
  }
}

/** Wires the settings dialog of index.html; `onSave(changedIds)` after a save. */
export function settingsDialog(dialog, opener, endpoints, onSave) {
  const form = dialog.querySelector("form");
  const fields = dialog.querySelector(".endpoint-fields");
  const inputs = new Map();
  for (const feed of endpoints.feeds) {
    const row = document.createElement("div");
    row.className = "field";
    const label = document.createElement("label");
    label.htmlFor = `endpoint-${feed.id}`;
    label.textContent = feed.title;
    const input = document.createElement("input");
    input.id = `endpoint-${feed.id}`;
    input.name = feed.id;
    input.type = "text";
    input.inputMode = "url";
    input.spellcheck = false;
    input.autocomplete = "off";
    input.placeholder = feed.path;
    input.setAttribute("aria-describedby", `endpoint-${feed.id}-error`);
    const error = document.createElement("p");
    error.id = `endpoint-${feed.id}-error`;
    error.className = "field-error";
    input.addEventListener("input", () => {
      const problem = checkUrl(input.value);
      input.setCustomValidity(problem ?? "");
      error.textContent = problem ?? "";
    });
    row.append(label, input, error);
    fields.append(row);
    inputs.set(feed.id, input);
  }

  opener.addEventListener("click", () => {
    for (const [id, input] of inputs) {
      input.value = endpoints.url(id);
      input.setCustomValidity("");
      input.nextElementSibling.textContent = "";
    }
    dialog.showModal();
  });
  dialog.querySelector("[data-action=reset]").addEventListener("click", () => {
    for (const feed of endpoints.feeds) inputs.get(feed.id).value = feed.path;
  });
  dialog.querySelector("[data-action=cancel]").addEventListener("click", () => dialog.close());
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!form.reportValidity()) return;
    const urls = Object.fromEntries([...inputs].map(([id, input]) => [id, input.value]));
    onSave(endpoints.save(urls));
    dialog.close();
  });
}
