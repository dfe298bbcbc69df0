// The charts at a past minute: each card's body asked once from this server's history
// (GET api/history/<chart>?at=..., with the parameters the card asks live) and drawn by its usual
// view. No polling: the past does not change. A minute the history does not hold is said in place of
// the card's data; a server that does not answer is asked again a few times, further and further apart.

import { ContractError, fetchOnce } from "./poller.js";
import { formatMinute } from "./time.js";

const RETRY_MS = [2000, 5000, 10_000, 30_000];

const NOTES = {
  missing: "Not in this server's history",
  failed: "This minute did not load",
};

export class PastCharts {
  /**
   * @param {{feed: object, root: HTMLElement, view: object}[]} cards  the charts' cards
   * @param {(feed: object, at: string) => (string|null)} urlOf  a chart's history URL at a minute
   *   (null: nothing to ask, e.g. no country selected)
   * @param {(problem: string|null) => void} onProblem  what went wrong with the minute, for the banner
   */
  constructor(cards, urlOf, onProblem) {
    this.urlOf = urlOf;
    this.onProblem = onProblem;
    this.at = null;
    this.cards = new Map();
    for (const { feed, root, view } of cards) {
      const note = document.createElement("p");
      note.className = "past-note"; // (no live region: the banner's alert says it once for all)
      note.hidden = true;
      root.append(note);
      this.cards.set(feed.id, { feed, root, view, note, state: null, message: "", token: 0, timer: null });
    }
  }

  /** Every chart at `at`, asked once each. */
  show(at) {
    this.at = at;
    for (const card of this.cards.values()) this.load(card, 0);
  }

  /** The charts `ids` asked again at the same minute (their parameters changed). */
  reload(ids) {
    if (this.at === null) return;
    for (const id of ids) this.load(this.cards.get(id), 0);
  }

  /** Back to live: forget the minute; cards keep a "leaving" look until their first live answer. */
  clear() {
    this.at = null;
    for (const card of this.cards.values()) {
      clearTimeout(card.timer);
      card.token += 1; // an answer still on its way is not drawn
      if (card.state === null || card.state === "idle") delete card.root.dataset.past; // nothing drawn
      else card.root.dataset.past = "leaving";
      card.state = null;
      card.note.hidden = true;
    }
    this.onProblem(null);
  }

  /** Live again for this card (its first live answer is drawn). */
  live(id) {
    const card = this.cards.get(id);
    if (card && card.state === null) delete card.root.dataset.past;
  }

  /** The card's badge while a minute is shown ({level, text, title}), or null when live. */
  badge(id) {
    const card = this.cards.get(id);
    if (!card || this.at === null || card.state === null) return null;
    const when = `${this.at.slice(11, 16)} UTC`;
    switch (card.state) {
      case "loading":
        return { level: "waiting", text: `loading ${when}…`, title: "asking the history for this minute" };
      case "shown":
        return { level: "past", text: `as at ${when}`, title: `as at the end of ${formatMinute(this.at)}` };
      case "missing":
        return { level: "past", text: `no data at ${when}`, title: card.message };
      case "idle":
        return { level: "idle", text: "no country selected", title: "nothing to ask for" };
      default:
        return { level: "red", text: card.message, title: `the history did not answer: ${card.message}` };
    }
  }

  async load(card, tries) {
    clearTimeout(card.timer);
    const token = ++card.token;
    const at = this.at;
    const url = this.urlOf(card.feed, at);
    if (url === null) {
      this.set(card, "idle", "");
      return;
    }
    this.set(card, "loading", "");
    const answer = await fetchOnce(url);
    if (token !== card.token) return; // another minute, other parameters, or live meanwhile
    if (answer.ok) {
      try {
        card.view.render(answer.body);
        this.set(card, "shown", "");
      } catch (error) {
        if (!(error instanceof ContractError)) console.error(error); // a bug of this page: let it be seen
        const why = error instanceof ContractError ? error.message : "the page failed to show it";
        this.set(card, "failed", `unexpected answer: ${why}`);
      }
    } else if (answer.status >= 400 && answer.status < 500) {
      this.set(card, "missing", answer.message); // not there: asking again would not change that
    } else {
      this.set(card, "failed", answer.message);
      const wait = RETRY_MS[Math.min(tries, RETRY_MS.length - 1)];
      card.timer = setTimeout(() => this.load(card, tries + 1), wait);
    }
  }

  set(card, state, message) {
    card.state = state;
    card.message = message;
    card.root.dataset.past = state;
    const note = NOTES[state];
    card.note.hidden = !note;
    if (note) {
      const text = state === "failed" ? `${note}: ${message}; asking again` : note;
      if (card.note.textContent !== text) card.note.textContent = text;
    }
    const trouble = [...this.cards.values()].find((c) => c.state === "missing" || c.state === "failed");
    this.onProblem(trouble ? trouble.message : null);
  }
}
