// Pushed charts: one server-sent-events stream (GET api/live) for every chart this page asks of this
// server, with the charts' pollers as the fallback.
//
// The stream carries each chart's new body the moment it exists (`chart` events, the same bytes as
// the chart's URL answers) and, when nothing changed, the data's age (`fresh` events); it replaces
// the polling of the charts it carries. It is opened only where the server's index lists the route
// (`live`: a server with the route off, or in direct mode, does not, and its charts poll). Charts
// whose URL the endpoint settings point elsewhere are never on it (they keep polling their server). When the stream fails (the route is absent: 404;
// refused: 503, e.g. its cap; the server is gone), those charts poll again at once, and the stream
// is tried again after a back-off that doubles up to MAX_BACKOFF_MS; it resumes with `?since=` (the
// ETags last received), so charts already shown are not sent again.

const FIRST_BACKOFF_MS = 1000;
const MAX_BACKOFF_MS = 30_000;
const STEADY_MS = 10_000; // a stream that lived this long resets the back-off

export class LiveCharts {
  /**
   * @param {object} options
   * @param {Map<string, import("./poller.js").Poller>} options.pollers  the charts that may be streamed
   * @param {() => string[]} options.streamable  their ids whose URL is this server's, now
   * @param {() => URLSearchParams} options.params  countries/bucket as the page asks them now
   * @param {boolean} options.offered  the server's index lists the live route (else: polls only)
   */
  constructor({ pollers, streamable, params, offered }) {
    this.offered = offered;
    this.pollers = pollers;
    this.streamable = streamable;
    this.params = params;
    this.source = null; // the EventSource while one is open or opening
    this.streamed = new Set(); // ids the open stream carries (their pollers are stopped)
    this.lastId = "";
    this.running = false;
    this.backoff = FIRST_BACKOFF_MS;
    this.retry = null;
    this.openedAt = 0;
    this.state = "off"; // off | connecting | streaming | polling (the stream failed: polls until retried)
  }

  /** Show live data: stream what can be streamed, poll the rest; `anew`: the charts shown are not
   * what the stream last sent (so it sends every one). */
  start(anew = false) {
    if (anew) this.lastId = "";
    if (this.running && (this.source || this.retry)) {
      if (!anew) return;
      this.close();
    }
    this.running = true;
    this.open();
  }

  /** Show nothing live (a hidden tab, a past minute): no stream, no polls. */
  stop() {
    this.running = false;
    this.close();
    clearTimeout(this.retry);
    this.retry = null;
    for (const poller of this.pollers.values()) poller.stop();
    this.state = "off";
  }

  /** The page asks something else (countries, bucket, endpoints): a new stream for it. */
  restart() {
    if (this.running) this.start(true);
  }

  open() {
    clearTimeout(this.retry);
    this.retry = null;
    const ids = this.streamable();
    for (const [id, poller] of this.pollers) if (!ids.includes(id)) poller.start();
    if (!this.offered || ids.length === 0 || typeof EventSource === "undefined") {
      this.fallBack(ids, false);
      return;
    }
    const query = this.params();
    query.set("charts", ids.join(","));
    if (this.lastId) query.set("since", this.lastId);
    const url = `api/live?${query.toString().replace(/%2C/gi, ",")}`;
    const source = new EventSource(url);
    this.source = source;
    this.state = "connecting";
    this.openedAt = performance.now();
    source.addEventListener("chart", (event) => {
      if (this.source !== source) return;
      this.took(ids);
      const data = JSON.parse(event.data);
      this.lastId = event.lastEventId;
      this.pollers.get(data.chart)?.pushed(data.body, data.etag, data.age_ms);
      this.confirm(data.age_ms);
    });
    source.addEventListener("fresh", (event) => {
      if (this.source !== source) return;
      this.took(ids);
      this.confirm(JSON.parse(event.data).age_ms);
    });
    source.addEventListener("error", () => {
      if (this.source !== source) return;
      this.close();
      if (performance.now() - this.openedAt > STEADY_MS) this.backoff = FIRST_BACKOFF_MS;
      this.fallBack(ids, true);
    });
  }

  /** The stream answered: it carries `ids` from now on, so their polls stop. */
  took(ids) {
    if (this.state === "streaming") return;
    this.state = "streaming";
    for (const id of ids) {
      this.streamed.add(id);
      this.pollers.get(id).stop();
    }
  }

  /** Every streamed chart is as fresh as the stream says. */
  confirm(ageMs) {
    for (const id of this.streamed) this.pollers.get(id).confirm(ageMs);
  }

  /** Poll `ids`; with `retry`, try the stream again after the back-off. */
  fallBack(ids, retry) {
    this.state = "polling";
    for (const id of ids) this.pollers.get(id).start();
    if (!retry || !this.running) return;
    this.retry = setTimeout(() => this.open(), this.backoff);
    this.backoff = Math.min(MAX_BACKOFF_MS, this.backoff * 2);
  }

  close() {
    this.source?.close();
    this.source = null;
    this.streamed.clear();
  }
}
