// The traffic panel: steer the demo's submissions from the page (rate, pause/resume, empty a country).
//
// It exists only when the server was started with traffic controls (`demo`, or `serve
// --traffic-control`): then the /api index links "traffic", and only then is the panel built. Its
// controls appear only after the token from `<data-dir>/api-token` is given, typed in or handed over
// in the URL fragment (`#token=...`: browsers never send the fragment to a server, and the page takes
// it out of the address bar at once). The token stays in this tab (sessionStorage) and goes only to
// this server, in the Authorization header of its /api/traffic requests.

import { countryName } from "./catalog.js";

const TOKEN_KEY = "pisa-pulse.traffic-token";
const POLL_MS = 1000;
const SLIDER_MAX = 2000; // the number field takes more (up to the API's 1,000,000)
const REFUSED = "The token was refused; it changes each time the server starts. Paste the current one.";

const LOCKED = `
  <form class="traffic-unlock">
    <label for="traffic-token">Token</label>
    <input id="traffic-token" type="password" autocomplete="off" spellcheck="false" required
      placeholder="contents of api-token" />
    <button type="submit" class="button primary">Unlock controls</button>
    <p class="traffic-hint">This server lets its demo traffic be steered: the token is in the
      <code>api-token</code> file of its data dir and changes at every start.</p>
  </form>`;

const UNLOCKED = `
  <div class="traffic-controls">
    <p class="traffic-now">
      <span class="traffic-achieved">–</span><span class="traffic-unit">submissions/s</span>
      <span class="traffic-target"></span>
    </p>
    <div class="traffic-rate">
      <label for="traffic-rate-range">Target rate</label>
      <input id="traffic-rate-range" type="range" min="0" max="${SLIDER_MAX}" step="10" />
      <input id="traffic-rate-number" type="number" min="0" max="1000000" step="1"
        aria-label="Target rate, operations per second" />
      <span class="traffic-unit">/s</span>
    </div>
    <button type="button" class="button traffic-pause">Pause</button>
    <div class="traffic-empty">
      <label for="traffic-country">Empty</label>
      <select id="traffic-country"></select>
      <button type="button" class="button traffic-empty-ask">Empty…</button>
      <span class="traffic-confirm" hidden>
        <button type="button" class="button danger traffic-empty-yes"></button>
        <button type="button" class="button traffic-empty-no">Keep</button>
      </span>
    </div>
    <p class="traffic-counts"></p>
    <button type="button" class="button traffic-lock" title="Forget the token in this tab">Lock</button>
  </div>`;

// Taken before anything else runs, so the token leaves the address bar (and history) at once.
const handedOver = takeTokenFromFragment();

/** Adds the traffic panel after `anchor` if the server index (GET api) links traffic controls. */
export function trafficPanel(anchor, index) {
  if (typeof index?.traffic !== "string") return null; // controls off: no panel, no requests
  const panel = new TrafficPanel(anchor, handedOver ?? storedToken());
  if (panel.token === null) panel.lock();
  else panel.poll();
  return panel;
}

class TrafficPanel {
  constructor(anchor, token) {
    this.token = token;
    this.timer = null;
    this.busy = false; // a request of ours is in flight: polls wait
    this.countries = "";
    this.root = document.createElement("section");
    this.root.className = "traffic";
    this.root.setAttribute("aria-labelledby", "traffic-title");
    this.root.innerHTML = `
      <div class="traffic-head">
        <h2 id="traffic-title">Traffic</h2>
        <p class="traffic-state" data-state="locked">locked</p>
      </div>
      <div class="traffic-body"></div>
      <p class="traffic-message" role="status" aria-live="polite"></p>`;
    this.body = this.root.querySelector(".traffic-body");
    this.state = this.root.querySelector(".traffic-state");
    this.message = this.root.querySelector(".traffic-message");
    anchor.after(this.root);
    // A hidden tab asks nothing, like the charts.
    document.addEventListener("visibilitychange", () => (document.hidden ? this.stop() : this.resume()));
  }

  resume() {
    if (this.token !== null && this.timer === null) this.poll();
  }

  stop() {
    clearTimeout(this.timer);
    this.timer = null;
  }

  async poll() {
    this.timer = -1; // a poll is running: start() does not begin another
    if (!this.busy) {
      const answer = await this.call("GET", "api/traffic");
      if (answer !== null) this.show(answer);
    }
    if (this.token !== null && this.timer !== null) this.timer = setTimeout(() => this.poll(), POLL_MS);
  }

  /** One request to this server's traffic routes; the status body, or null after saying what failed. */
  async call(method, path, body) {
    let response;
    try {
      response = await fetch(path, {
        method,
        headers: { Authorization: `Bearer ${this.token}`, "Content-Type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
      });
    } catch {
      this.say("The server does not answer.", "error");
      return null;
    }
    const answer = await response.json().catch(() => null);
    if (response.status === 401) {
      this.forget();
      this.lock(REFUSED);
      return null;
    }
    if (!response.ok) {
      this.say(answer?.error?.message ?? `The server answered ${response.status}.`, "error");
      return null;
    }
    return answer;
  }

  /** The token form; `why` says what went wrong, if anything. */
  lock(why = "") {
    this.stop();
    this.token = null;
    this.state.dataset.state = "locked";
    this.state.textContent = "locked";
    this.body.innerHTML = LOCKED;
    const form = this.body.querySelector("form");
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.token = form.querySelector("input").value.trim();
      remember(this.token);
      this.say("");
      this.resume();
    });
    this.say(why, why ? "error" : "");
  }

  /** The controls, built once per unlock. */
  unlock() {
    this.body.innerHTML = UNLOCKED;
    const $ = (selector) => this.body.querySelector(selector);
    this.controls = {
      achieved: $(".traffic-achieved"),
      target: $(".traffic-target"),
      range: $("#traffic-rate-range"),
      number: $("#traffic-rate-number"),
      pause: $(".traffic-pause"),
      country: $("#traffic-country"),
      ask: $(".traffic-empty-ask"),
      confirm: $(".traffic-confirm"),
      yes: $(".traffic-empty-yes"),
      counts: $(".traffic-counts"),
    };
    const c = this.controls;
    this.countries = "";
    c.range.addEventListener("input", () => (c.number.value = c.range.value));
    c.range.addEventListener("change", () => this.setRate(Number(c.range.value)));
    c.number.addEventListener("change", () => {
      if (!c.number.checkValidity() || c.number.value === "") {
        this.say("The rate is a whole number from 0 to 1,000,000 per second.", "error");
        return;
      }
      this.setRate(Number(c.number.value));
    });
    c.pause.addEventListener("click", () =>
      this.act({ action: c.pause.dataset.paused === "true" ? "resume" : "pause" }),
    );
    c.ask.addEventListener("click", () => {
      const code = c.country.value;
      c.yes.textContent = `Delete every row of ${countryName(code.toUpperCase())}`;
      c.ask.hidden = true;
      c.confirm.hidden = false;
      c.yes.focus();
    });
    const closeConfirm = () => {
      c.confirm.hidden = true;
      c.ask.hidden = false;
    };
    this.body.querySelector(".traffic-empty-no").addEventListener("click", () => {
      closeConfirm();
      c.ask.focus();
    });
    c.yes.addEventListener("click", async () => {
      const code = c.country.value;
      closeConfirm();
      const answer = await this.request("POST", "api/traffic/empty", { country: code });
      if (answer !== null) {
        const name = countryName(code.toUpperCase());
        this.say(`Emptied ${name}: its numbers drop to zero, then refill as traffic goes on.`);
      }
    });
    this.body.querySelector(".traffic-lock").addEventListener("click", () => {
      this.forget();
      this.lock();
    });
  }

  async setRate(rate) {
    const answer = await this.request("POST", "api/traffic", { rate });
    if (answer !== null) {
      this.show(answer);
      this.say(`Target rate set to ${fmt(answer.rate)} per second.`);
    }
  }

  async act(body) {
    const answer = await this.request("POST", "api/traffic", body);
    if (answer !== null) {
      this.show(answer);
      this.say(answer.paused ? "Traffic paused." : "Traffic resumed.");
    }
  }

  /** A change the user asked for: polls wait until it is answered. */
  async request(method, path, body) {
    this.busy = true;
    try {
      return await this.call(method, path, body);
    } finally {
      this.busy = false;
    }
  }

  /** Renders GET /api/traffic's body. */
  show(status) {
    if (this.token === null) return;
    if (this.state.dataset.state === "locked") this.unlock();
    const c = this.controls;
    const state = status.paused ? "paused" : status.failing?.length ? "failing" : "running";
    if (this.state.dataset.state !== state) {
      this.state.dataset.state = state;
      this.state.textContent = state;
    }
    c.achieved.textContent = fmt(status.achieved_rate);
    c.target.textContent = status.paused ? "paused" : `target ${fmt(status.rate)}/s`;
    const editing = document.activeElement === c.range || document.activeElement === c.number;
    if (!editing) {
      c.number.value = String(Math.round(status.rate));
      c.range.value = String(Math.min(SLIDER_MAX, status.rate));
    }
    c.pause.dataset.paused = String(status.paused);
    c.pause.textContent = status.paused ? "Resume" : "Pause";
    const countries = (status.countries ?? []).join(",");
    if (countries !== this.countries) {
      this.countries = countries;
      const chosen = c.country.value;
      c.country.replaceChildren(
        ...(status.countries ?? []).map((code) => {
          const option = new Option(`${code.toUpperCase()} · ${countryName(code.toUpperCase())}`, code);
          option.selected = code === chosen;
          return option;
        }),
      );
    }
    const failing = status.failing?.length ? ` · failing: ${status.failing.join(", ")}` : "";
    c.counts.textContent =
      `${fmt(status.inserted)} new · ${fmt(status.updated)} corrected · ` +
      `${fmt(status.deleted)} withdrawn · ${fmt(status.errors)} errors${failing}`;
  }

  say(text, tone = "") {
    this.message.textContent = text;
    this.message.dataset.tone = tone;
  }

  forget() {
    this.token = null;
    try {
      sessionStorage.removeItem(TOKEN_KEY);
    } catch {
      // storage refused: nothing was kept
    }
  }
}

function takeTokenFromFragment() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const token = fragment.get("token");
  if (token === null) return null;
  fragment.delete("token");
  const rest = fragment.toString();
  history.replaceState(null, "", `${location.pathname}${location.search}${rest ? `#${rest}` : ""}`);
  remember(token);
  return token;
}

function storedToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

function remember(token) {
  try {
    sessionStorage.setItem(TOKEN_KEY, token);
  } catch {
    // storage refused (private mode): the token works until the page closes
  }
}

const NUMBER = new Intl.NumberFormat("en", { maximumFractionDigits: 0 });

function fmt(value) {
  return typeof value === "number" ? NUMBER.format(value) : "–";
}
