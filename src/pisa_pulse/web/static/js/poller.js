// One chart's polling loop and what it knows about the freshness of what it shows; while the live
// stream carries the chart (live.js), the loop is stopped and the stream hands it bodies instead.
//
// At most one request is in flight per poller, and requests start at least `interval` ms apart,
// whatever the server's speed: the next poll is scheduled only when the previous one has ended.
// Same-origin polls send the last ETag in If-None-Match themselves and keep what is shown on a 304.
// Cross-origin polls let the browser's HTTP cache send If-None-Match instead (an author-set
// If-None-Match is not a CORS-safelisted header, so it would need a preflight that a server
// allowing plain cross-origin GET may refuse); an unchanged ETag is then treated like a 304.

export const FRESH_MS = 1000; // older than this: amber
export const STALE_MS = 60_000; // older than this: red
export const FAILING_RED_MS = 5000; // polls failing for this long: red whatever the data's age
const STREAM_SLACK_MS = 500;
// A streamed chart draws at once while its drawing has taken less than DRAW_SHARE of the page's time
// lately (its cost decays by e every DECAY_MS); past that it waits until it is under again, and then
// draws the latest body: a chart that changes faster than the page can draw it shows its latest
// body at the pace it can and the page stays responsive, while one that changes now and then draws
// the moment its change comes.
const DRAW_SHARE = 0.25;
const DECAY_MS = 1000;

/** A response that does not follow the chart's contract. */
export class ContractError extends Error {}

/** A response with an error status. */
class HttpError extends Error {}

export class Poller {
  /**
   * @param {object} options
   * @param {() => (string|null)} options.url  the URL to ask now; null: nothing to ask (e.g. no country)
   * @param {(body: any) => void} options.onBody  renders a new body; throws ContractError on a bad shape
   * @param {() => void} [options.onAnswer]  called after every good answer (new body or unchanged)
   */
  constructor({ url, onBody, onAnswer = () => {}, interval = 1000, timeout = 4000 }) {
    this.url = url;
    this.onBody = onBody;
    this.onAnswer = onAnswer;
    this.interval = interval;
    this.timeout = timeout;
    this.etag = null;
    this.etagUrl = null;
    this.receivedAt = null; // performance.now() of the last good answer
    this.ageAtReceipt = 0; // the data's age (X-Data-Age-Ms) when that answer arrived
    this.failingSince = null;
    this.error = null;
    this.idle = false; // true while url() is null
    this.streamed = false; // the last answer came from the live stream
    this.waiting = null; // a streamed body not drawn yet (see RENDER_SHARE)
    this.drawTimer = null;
    this.drawnAt = 0;
    this.spent = 0; // ms of drawing, decayed to drawnAt
    this.lastStart = -Infinity;
    this.running = false;
    this.inFlight = false;
    this.timer = null;
  }

  /** Start polling (again); never overlaps a request still in flight. */
  start() {
    if (this.running) return;
    this.running = true;
    if (!this.inFlight) this.schedule();
  }

  /** Stop polling; a request in flight still completes (a streamed body waiting is dropped). */
  stop() {
    this.running = false;
    clearTimeout(this.timer);
    this.timer = null;
    clearTimeout(this.drawTimer);
    this.drawTimer = null;
    if (this.waiting !== null) this.etag = null; // its ETag is of a body never drawn
    this.waiting = null;
  }

  /** Forget the freshness and ETag (the URL changed for good, e.g. in the settings). */
  reset() {
    this.etag = this.etagUrl = this.receivedAt = this.failingSince = this.error = null;
    this.ageAtReceipt = 0;
  }

  schedule() {
    clearTimeout(this.timer);
    const wait = Math.max(0, this.lastStart + this.interval - performance.now());
    this.timer = setTimeout(() => this.tick(), wait);
  }

  async tick() {
    this.timer = null;
    if (!this.running || this.inFlight) return;
    this.lastStart = performance.now(); // also when there is nothing to ask: look again in a second
    try {
      await this.poll();
    } finally {
      if (this.running) this.schedule();
    }
  }

  async poll() {
    const url = this.url();
    this.idle = url === null;
    if (this.idle) return;
    const target = new URL(url, location.href);
    const sameOrigin = target.origin === location.origin;
    if (this.etagUrl !== target.href) this.etag = null;
    const headers = sameOrigin && this.etag ? { "If-None-Match": this.etag } : {};
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), this.timeout);
    this.inFlight = true;
    try {
      const response = await fetch(target, {
        headers,
        cache: sameOrigin ? "no-store" : "no-cache",
        credentials: "omit",
        signal: abort.signal,
      });
      if (response.status === 304) {
        this.answered(response);
        return;
      }
      if (!response.ok) throw new HttpError(await describeError(response));
      const etag = response.headers.get("ETag");
      if (etag && etag === this.etag && this.etagUrl === target.href) {
        await response.body?.cancel();
        this.answered(response);
        return;
      }
      const body = await response.json();
      if (this.url() !== url) return; // the selection changed meanwhile: the next poll asks anew
      this.onBody(body);
      this.etag = etag;
      this.etagUrl = target.href;
      this.answered(response);
    } catch (error) {
      this.failed(error, abort.signal.aborted);
    } finally {
      clearTimeout(timer);
      this.inFlight = false;
    }
  }

  answered(response) {
    this.current(Number.parseInt(response.headers.get("X-Data-Age-Ms") ?? "", 10), false);
  }

  /** A body the live stream pushed: shown as a poll's answer would be (at the pace the page can draw
   * it), its ETag kept for later polls. */
  pushed(body, etag, ageMs) {
    const url = this.url();
    if (url === null) return;
    this.waiting = body;
    this.etag = etag;
    this.etagUrl = new URL(url, location.href).href;
    this.current(ageMs, true);
    if (this.drawTimer !== null) return; // drawn when the budget allows, with the latest body
    const now = performance.now();
    const spent = this.spent * Math.exp(-(now - this.drawnAt) / DECAY_MS);
    const allowed = DRAW_SHARE * DECAY_MS;
    if (spent <= allowed) this.draw();
    else this.drawTimer = setTimeout(() => this.draw(), DECAY_MS * Math.log(spent / allowed));
  }

  draw() {
    this.drawTimer = null;
    const body = this.waiting;
    this.waiting = null;
    if (body === null) return;
    const started = performance.now();
    this.onBody(body);
    const ended = performance.now();
    this.spent = this.spent * Math.exp(-(ended - this.drawnAt) / DECAY_MS) + (ended - started);
    this.drawnAt = ended;
  }

  /** The live stream says that what is shown is current, `ageMs` old. */
  confirm(ageMs) {
    this.idle = this.url() === null;
    this.current(ageMs, true);
  }

  current(ageMs, streamed) {
    this.ageAtReceipt = Number.isFinite(ageMs) && ageMs >= 0 ? ageMs : 0;
    this.receivedAt = performance.now();
    this.streamed = streamed;
    this.failingSince = null;
    this.error = null;
    this.onAnswer();
  }

  failed(error, timedOut) {
    this.failingSince ??= performance.now();
    if (timedOut) this.error = `no answer in ${this.timeout / 1000} s`;
    else if (error instanceof ContractError) this.error = `unexpected answer: ${error.message}`;
    else if (error instanceof SyntaxError) this.error = "unexpected answer: not JSON";
    else if (error instanceof TypeError) this.error = "unreachable";
    else if (error instanceof HttpError) this.error = error.message;
    else {
      this.error = "the page failed to show the answer";
      console.error(error); // a bug of this page, not of the server: let it be seen
    }
  }

  /** {level: waiting|ok|amber|red|idle, text, title}: what the card's badge shows now. */
  freshness(now = performance.now()) {
    if (this.idle) return { level: "idle", text: "no country selected", title: "nothing to ask for" };
    const age = this.receivedAt === null ? null : this.ageAtReceipt + (now - this.receivedAt);
    if (this.failingSince !== null) {
      const failingFor = now - this.failingSince;
      // Amber at the first failure; red once polls have failed for FAILING_RED_MS (or the data is stale).
      const red = failingFor >= FAILING_RED_MS || age === null || age > STALE_MS;
      const text = age === null ? this.error : `${this.error} · data ${formatAge(age)} old`;
      return { level: red ? "red" : "amber", text, title: `polls failing: ${this.error}`, age };
    }
    if (age === null) return { level: "waiting", text: "connecting…", title: "waiting for the first answer" };
    // The text is the data's whole age; the level allows for the poll interval itself (polling every
    // second, any data is up to a second older than its answer), or every chart would turn amber
    // for a moment before each answer. Amber: the server's data was over 1 s old, or an answer is late.
    // The stream says the data's age at most every second (STREAM_SLACK_MS more for its timers).
    const expected = this.streamed ? this.interval + STREAM_SLACK_MS : this.interval;
    const late = this.ageAtReceipt + Math.max(0, now - this.receivedAt - expected);
    const level = late > STALE_MS ? "red" : late > FRESH_MS ? "amber" : "ok";
    return { level, text: `updated ${formatAge(age)} ago`, title: "age of the data shown", age };
  }
}

async function describeError(response) {
  try {
    const message = errorMessage(await response.json());
    if (message) return `HTTP ${response.status}: ${message}`;
  } catch {
    // not the API's error shape: the status says enough
  }
  return `HTTP ${response.status}`;
}

/** The message of the API's error shape ({"error": {"status", "message"}}), or null. */
export function errorMessage(body) {
  const error = body?.error;
  if (typeof error?.message === "string") return error.message;
  if (typeof error === "string") return typeof body.fix === "string" ? `${error}; ${body.fix}` : error;
  return null;
}

/**
 * One request, not a polling loop (the history: a past minute does not change).
 * Resolves to {ok: true, status, body} or {ok: false, status (0: no answer), message}; never throws.
 */
export async function fetchOnce(url, timeout = 15_000) {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), timeout);
  try {
    const response = await fetch(url, {
      headers: { Accept: "application/json" },
      cache: "no-store", // a minute not written yet may be there on the next ask
      credentials: "omit",
      signal: abort.signal,
    });
    let body = null;
    try {
      body = await response.json();
    } catch {
      // not JSON: said below
    }
    if (response.ok && body !== null) return { ok: true, status: response.status, body };
    const message = response.ok ? "unexpected answer: not JSON" : errorMessage(body);
    return { ok: false, status: response.status, message: message ?? `HTTP ${response.status}` };
  } catch {
    const message = abort.signal.aborted ? `no answer in ${timeout / 1000} s` : "unreachable";
    return { ok: false, status: 0, message };
  } finally {
    clearTimeout(timer);
  }
}

/** 120 ms, 3.4 s, 42 s, 5 min, 3 h */
export function formatAge(ms) {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 10_000) return `${(ms / 1000).toFixed(1)} s`;
  if (ms < 60_000) return `${Math.round(ms / 1000)} s`;
  if (ms < 3_600_000) return `${Math.floor(ms / 60_000)} min`;
  return `${Math.floor(ms / 3_600_000)} h`;
}
