// Chart 1: the big number. It counts towards each new value rather than jumping, and says how many
// submissions arrived in the last minute. Screen readers hear the settled number, at most every 5 s.

import { ContractError } from "../poller.js";
import { REDUCED_MOTION } from "../theme.js";

const TWEEN_MS = 800; // shorter than a poll, so the number settles before the next one
const WINDOW_MS = 60_000;
const MAX_SAMPLES = 120; // bounded whatever the poll rate
const ANNOUNCE_EVERY_MS = 5000;
const format = new Intl.NumberFormat("en");

export class SubmissionsView {
  constructor(card) {
    this.card = card;
    this.number = card.querySelector(".big-number");
    this.live = card.querySelector(".big-number-live");
    this.rate = card.querySelector(".rate");
    this.sparkLine = card.querySelector(".spark-line");
    this.sparkArea = card.querySelector(".spark-area");
    this.shown = null; // the number on screen (mid-tween: between two counts)
    this.target = null;
    this.samples = []; // [performance.now(), count] of recent answers
    this.frame = 0;
    this.lastAnnounced = -Infinity;
  }

  render(body) {
    const count = body?.count;
    if (!Number.isInteger(count)) throw new ContractError("count is not an integer");
    this.target = count;
    this.number.dataset.count = String(count);
    this.card.dataset.items = "1";
    if (this.shown === null || REDUCED_MOTION) this.draw(count);
    else this.tween(this.shown, count);
    this.announce();
  }

  /** Every good answer, changed or not: the rate's window moves on. */
  answered() {
    if (this.target === null) return;
    const now = performance.now();
    this.samples.push([now, this.target]);
    while (this.samples.length > MAX_SAMPLES || now - this.samples[0][0] > WINDOW_MS) this.samples.shift();
    const [since, before] = this.samples[0];
    const span = now - since;
    let text = "";
    if (span >= 2000) {
      const delta = this.target - before;
      const window = span >= WINDOW_MS - 2000 ? "the last minute" : `the last ${Math.round(span / 1000)} s`;
      text =
        delta === 0
          ? `No new submissions in ${window}`
          : `${delta > 0 ? "+" : "−"}${format.format(Math.abs(delta))} in ${window}`;
    }
    if (this.rate.textContent !== text) this.rate.textContent = text;
    this.drawSpark(now);
    this.announce();
  }

  /** The page moved between live and a past minute: the last minute's rate and line start again. */
  timeChanged() {
    this.samples = [];
    this.rate.textContent = "";
    this.sparkLine.removeAttribute("d");
    this.sparkArea.removeAttribute("d");
  }

  /** The last minute's count as a sparkline (viewBox 300 x 64), newest at the right edge. */
  drawSpark(now) {
    const counts = this.samples.map(([, count]) => count);
    const low = Math.min(...counts);
    const range = Math.max(...counts) - low;
    const points = this.samples.map(([at, count]) => {
      const x = 300 - ((now - at) / WINDOW_MS) * 300;
      const y = range === 0 ? 48 : 60 - ((count - low) / range) * 52;
      return `${x.toFixed(1)},${y.toFixed(1)}`;
    });
    const line = `M${points.join("L")}`;
    this.sparkLine.setAttribute("d", line);
    this.sparkArea.setAttribute("d", `${line}L300,64L${points[0].split(",")[0]},64Z`);
  }

  tween(from, to) {
    cancelAnimationFrame(this.frame);
    if (from === to) return;
    const start = performance.now();
    const step = (now) => {
      const t = Math.min(1, (now - start) / TWEEN_MS);
      const eased = 1 - (1 - t) ** 3;
      this.draw(Math.round(from + (to - from) * eased));
      if (t < 1) this.frame = requestAnimationFrame(step);
    };
    this.frame = requestAnimationFrame(step);
  }

  draw(value) {
    this.shown = value;
    this.number.textContent = format.format(value);
  }

  announce() {
    const now = performance.now();
    const text = `${format.format(this.target)} submissions`;
    if (now - this.lastAnnounced < ANNOUNCE_EVERY_MS || this.live.textContent === text) return;
    this.lastAnnounced = now;
    this.live.textContent = text;
  }
}
