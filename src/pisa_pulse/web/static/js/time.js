// The time control: the charts live (the default) or as this server showed them at the end of a past
// minute (UTC), from its history (README, History). The choice lives in the URL's fragment
// (#at=2026-12-02T12:00Z), so a past view can be shared and reloaded, and Back and Forward move
// between the views chosen. The control works only when /api/status says the server keeps history;
// otherwise it stays disabled and says why.

const MINUTE_MS = 60_000;
const DAY_MS = 86_400_000;
const NO_HISTORY = "This server keeps no history, so it cannot show a past minute (README, History)";
const CHECKING = "Waiting for /api/status to say whether this server keeps history";

const dateFormat = new Intl.DateTimeFormat("en-GB", {
  timeZone: "UTC",
  day: "numeric",
  month: "short",
  year: "numeric",
  hour: "2-digit",
  minute: "2-digit",
  hourCycle: "h23",
});

/** The minute of a UTC time written YYYY-MM-DDTHH:MM[:SS[.fff]][Z], as "2026-12-02T12:00Z"; null for
 * anything else, or for a time that names no moment (2026-02-31T12:00). */
export function minuteOf(text) {
  const pattern = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::\d{2}(?:\.\d{1,6})?)?Z?$/;
  const found = pattern.exec(String(text ?? ""));
  if (!found) return null;
  const [year, month, day, hour, minute] = found.slice(1).map(Number);
  const moment = new Date(Date.UTC(year, month - 1, day, hour, minute));
  const same =
    moment.getUTCFullYear() === year &&
    moment.getUTCMonth() === month - 1 &&
    moment.getUTCDate() === day &&
    moment.getUTCHours() === hour &&
    moment.getUTCMinutes() === minute;
  return same ? isoMinute(moment.getTime()) : null;
}

/** "2026-12-02T12:00Z": the minute that holds `ms` (Unix milliseconds). */
export function isoMinute(ms) {
  return `${new Date(Math.floor(ms / MINUTE_MS) * MINUTE_MS).toISOString().slice(0, 16)}Z`;
}

/** Unix milliseconds of a minute written as isoMinute() writes it. */
export function msOf(minute) {
  return Date.parse(minute);
}

/** "2 Dec 2026, 12:00 UTC" */
export function formatMinute(minute) {
  return `${dateFormat.format(new Date(msOf(minute)))} UTC`;
}

/** A minute that /api/status gives as an ISO time or a number (minutes, seconds or milliseconds since
 * the Unix epoch), or null. */
function minuteFromStatus(value) {
  if (typeof value === "string") {
    const ms = Date.parse(value);
    return Number.isFinite(ms) ? isoMinute(ms) : null;
  }
  if (typeof value !== "number" || !Number.isFinite(value) || value <= 0) return null;
  if (value < 1e9) return isoMinute(value * MINUTE_MS);
  return isoMinute(value < 1e11 ? value * 1000 : value);
}

/** The minute in the page's fragment (#at=...): a minute, null (none: live) or "bad" (not a minute). */
function minuteInFragment() {
  const raw = new URLSearchParams(location.hash.slice(1)).get("at");
  if (raw === null) return null;
  return minuteOf(raw) ?? "bad";
}

/** The address with `at` in its fragment (or none), the fragment's other parameters kept. */
function addressWith(at) {
  const fragment = new URLSearchParams(location.hash.slice(1));
  fragment.delete("at");
  const parts = [at === null ? "" : `at=${at}`, fragment.toString()].filter(Boolean);
  return `${location.pathname}${location.search}${parts.length ? `#${parts.join("&")}` : ""}`;
}

export class TimeControl {
  /**
   * @param {(at: string|null) => void} onChange  the minute to show ("2026-12-02T12:00Z"), or null: live
   * @param {(available: boolean) => void} onAvailable  whether this server keeps history (once known)
   */
  constructor(onChange, onAvailable = () => {}) {
    this.onChange = onChange;
    this.onAvailable = onAvailable;
    this.at = null; // the minute shown; null: live
    this.available = null; // null: not known yet
    this.reason = CHECKING;
    this.span = { min: null, max: null, known: false };
    this.toggle = document.querySelector("#open-time");
    this.toggleText = this.toggle.querySelector(".time-toggle-text");
    this.why = document.querySelector("#time-why");
    this.dialog = document.querySelector("#time-dialog");
    this.form = this.dialog.querySelector("form");
    this.input = this.dialog.querySelector("#time-at");
    this.error = this.dialog.querySelector("#time-error");
    this.spanText = this.dialog.querySelector("#time-span");
    this.banner = document.querySelector("#past-banner");
    this.bannerMinute = this.banner.querySelector(".past-minute");
    this.problemText = this.banner.querySelector(".past-problem");
    this.changeButton = this.banner.querySelector("[data-time=change]");
    this.bind();
    this.showAvailability();
  }

  /** Show what the URL's fragment asks for (call once, when the charts are ready). */
  start() {
    const wanted = minuteInFragment();
    if (wanted === "bad") history.replaceState(history.state, "", addressWith(null)); // not a minute: live
    this.apply(wanted === "bad" ? null : wanted);
  }

  bind() {
    this.toggle.addEventListener("click", () => this.open());
    this.changeButton.addEventListener("click", () => this.open());
    for (const button of document.querySelectorAll("[data-time=live]")) {
      button.addEventListener("click", () => {
        if (this.dialog.open) this.dialog.close();
        this.choose(null);
        this.toggle.focus(); // the banner (and the button that opened the dialog) is gone: stay near
      });
    }
    this.dialog.querySelector("[data-action=cancel]").addEventListener("click", () => this.dialog.close());
    this.input.addEventListener("input", () => this.check());
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      const at = this.check();
      if (at === null || !this.form.reportValidity()) return;
      this.dialog.close();
      this.choose(at);
    });
    // Back, Forward, or a fragment typed in the address bar.
    const followAddress = () => {
      const wanted = minuteInFragment();
      const at = wanted === "bad" ? null : wanted;
      if (at !== this.at) this.apply(at);
    };
    window.addEventListener("popstate", followAddress);
    window.addEventListener("hashchange", followAddress);
  }

  /** The input's minute, with its error shown (null: none or not a minute). */
  check() {
    const at = minuteOf(this.input.value);
    const problem = this.input.value && at === null ? "not a minute in the calendar" : "";
    this.input.setCustomValidity(problem);
    this.error.textContent = problem;
    return at;
  }

  open() {
    if (!this.available) return; // disabled: the tooltip says why
    const { min, max, known } = this.span;
    this.input.min = min === null ? "" : min.slice(0, 16);
    this.input.max = max === null ? "" : max.slice(0, 16);
    const start = this.at ?? max ?? isoMinute(Date.now() - MINUTE_MS);
    this.input.value = start.slice(0, 16);
    this.check();
    const range = min && max ? `from ${formatMinute(min)} to ${formatMinute(max)}` : "";
    this.spanText.textContent = known
      ? `The history holds the minutes ${range}.`
      : `${range ? `Pick a minute ${range}. ` : ""}Minutes from before this server started keeping history ` +
        "are not in it; the page then says so.";
    this.dialog.querySelector(".time-live").hidden = this.at === null;
    this.dialog.showModal();
  }

  /** The reader's choice: into the address (a new history entry) and onto the page. */
  choose(at) {
    if (at === this.at) return;
    history.pushState(history.state, "", addressWith(at));
    this.apply(at);
  }

  apply(at) {
    this.at = at;
    this.problem(null);
    const past = at !== null;
    this.toggle.dataset.mode = past ? "past" : "live";
    this.toggleText.textContent = past ? `${at.slice(11, 16)} UTC` : "Live";
    this.banner.hidden = !past;
    document.body.dataset.time = past ? "past" : "live";
    if (past) {
      this.bannerMinute.textContent = formatMinute(at);
      this.bannerMinute.dateTime = at;
    }
    this.onChange(at);
  }

  /** A problem with the minute shown (the history's own words), under the banner; null: none. */
  problem(text) {
    this.problemText.hidden = !text;
    if (this.problemText.textContent !== (text ?? "")) this.problemText.textContent = text ?? "";
  }

  /** What /api/status says of the history: whether there is one, and the minutes it holds. Called at
   * every status poll, so it touches the page only when something changed. */
  learnStatus(body) {
    const history = body?.history;
    if (!history || typeof history !== "object") {
      this.setAvailable(false, NO_HISTORY);
      return;
    }
    // The oldest and newest minute written, where the status names them; else the retention's reach.
    const oldest = minuteFromStatus(history.oldest ?? history.first_minute ?? history.first);
    const newest = minuteFromStatus(history.newest ?? history.last_minute ?? history.last);
    const days = Number(body?.settings?.history?.retention_days);
    const now = Date.now();
    this.span = {
      min: oldest ?? (days > 0 ? isoMinute(now - days * DAY_MS) : null),
      max: newest ?? isoMinute(now - MINUTE_MS),
      known: oldest !== null && newest !== null,
    };
    this.setAvailable(true, "Show the charts as they were at a past minute (UTC)");
  }

  /** The history route said this server keeps none (a 404 saying so). */
  noHistory() {
    this.setAvailable(false, NO_HISTORY);
  }

  setAvailable(available, reason) {
    if (available === this.available && reason === this.reason) return;
    const changed = available !== this.available;
    this.available = available;
    this.reason = reason;
    this.showAvailability();
    if (changed) this.onAvailable(available);
  }

  showAvailability() {
    const disabled = this.available !== true;
    this.toggle.setAttribute("aria-disabled", String(disabled));
    this.toggle.title = this.reason;
    this.why.textContent = this.reason;
    this.changeButton.hidden = this.available === false; // no history: only "Back to live" makes sense
  }
}
