// The dashboard: a card per chart the server lists (GET api) and the source-health strip. The charts
// this server serves come pushed on one live stream (live.js) where it offers one, and each polls its
// own URL every second otherwise (or where the endpoint settings point it elsewhere). Builds the cards from the server's chart list (title,
// description, contract, parameters) and the views of those contracts (views/index.js), wires them
// to their pollers (poller.js), the country picker (picker.js) and the endpoint settings
// (settings.js) and, where the server allows it, the traffic panel (traffic.js); keeps the picker's
// countries and the time bucket in the URL. The time control (time.js) swaps the charts' polling
// for one question each to the history at a past minute (past.js), and back; where a view has a
// per-country trend, its strip (trend.js) follows the same minute.

import { loadIndex } from "./catalog.js";
import { LiveCharts } from "./live.js";
import { CountryPicker } from "./picker.js";
import { Poller } from "./poller.js";
import { PastCharts } from "./past.js";
import { Endpoints, settingsDialog } from "./settings.js";
import { registerTheme } from "./theme.js";
import { TimeControl } from "./time.js";
import { trafficPanel } from "./traffic.js";
import { TrendStrip } from "./trend.js";
import { HealthView } from "./views/health.js";
import { VIEWS } from "./views/index.js";

const STATUS_FEED = {
  id: "status",
  title: "Source status (health strip)",
  path: "api/status",
  View: HealthView,
};
const LEVELS = ["ok", "waiting", "amber", "red"]; // worse to the right (idle and past charts do not count)
const BUCKET_TEXT = {
  hour: "Per hour, last 12 hours (UTC)",
  minute: "Per minute, last hour (UTC)",
};
const RETRY_MS = 2000;

/** The feeds of the server's charts that this dashboard has a view for (paths relative to the page,
 * so that it also works behind a proxy under a prefix). */
function feedsOf(charts) {
  const feeds = [];
  for (const chart of charts) {
    const view = VIEWS.get(chart.contract);
    if (!view) {
      console.warn(`no view for chart ${chart.name}: contract ${chart.contract}`);
      continue;
    }
    feeds.push({
      id: chart.name,
      title: chart.title,
      description: chart.description,
      contract: chart.contract,
      path: chart.path.replace(/^\//, ""),
      perCountry: chart.per_country,
      bucket: chart.parameters.includes("bucket"),
      ...view,
    });
  }
  return feeds;
}

/** A chart's card, from the card template and its contract's body; the per-country ones go after
 * the picker, the others before it. */
function buildCard(feed, grid, picker) {
  const card = document.querySelector("#card").content.firstElementChild.cloneNode(true);
  card.classList.add(`span-${feed.span}`);
  if (feed.className) card.classList.add(feed.className);
  card.dataset.feed = feed.id;
  const title = card.querySelector("h2");
  title.id = `title-${feed.id}`;
  title.textContent = feed.title;
  card.setAttribute("aria-labelledby", title.id);
  card.querySelector(".subtitle").textContent = feed.description;
  const body = document.querySelector(`template[data-contract="${feed.contract}"]`).content.cloneNode(true);
  const tools = card.querySelector(".card-tools");
  for (const tool of body.querySelectorAll("[data-tool]")) tools.prepend(tool);
  card.querySelector(".card-source").before(body);
  if (feed.perCountry) grid.append(card);
  else grid.insertBefore(card, picker);
  return card;
}

/** The server's index, asked again every RETRY_MS until it answers. */
async function serverIndex(overall) {
  for (;;) {
    try {
      return await loadIndex();
    } catch (error) {
      overall.dataset.level = "red";
      overall.querySelector(".overall-text").textContent = "Server unreachable: retrying…";
      overall.title = String(error);
      await new Promise((resolve) => setTimeout(resolve, RETRY_MS));
    }
  }
}

function readQuery() {
  const query = new URLSearchParams(location.search);
  const raw = query.get("countries");
  const countries =
    raw === null
      ? null
      : raw
          .split(",")
          .map((c) => c.trim().toUpperCase())
          .filter((c) => /^[A-Z]{3}$/.test(c));
  return { countries, bucket: query.get("bucket") === "minute" ? "minute" : "hour" };
}

function writeQuery(countries, bucket) {
  const query = new URLSearchParams(location.search);
  query.delete("countries");
  query.delete("bucket");
  const parts = [query.toString()];
  if (countries !== null) parts.push(`countries=${countries.join(",")}`);
  if (bucket === "minute") parts.push("bucket=minute");
  const search = parts.filter(Boolean).join("&");
  history.replaceState(null, "", `${location.pathname}${search ? `?${search}` : ""}${location.hash}`);
}

async function start() {
  registerTheme();
  const overall = document.querySelector("#overall");
  const index = await serverIndex(overall);
  const charts = feedsOf(index.charts);
  const FEEDS = [...charts, STATUS_FEED];
  const grid = document.querySelector("#charts");
  const pickerRoot = document.querySelector(".picker");
  for (const feed of charts) buildCard(feed, grid, pickerRoot);
  pickerRoot.hidden = !charts.some((feed) => feed.perCountry);
  grid.removeAttribute("aria-busy");
  const state = { ...readQuery(), at: null }; // at: the past minute shown, null while live
  const endpoints = new Endpoints(charts); // the status strip is always this server's (same-origin)
  const pollers = new Map();

  const views = new Map();
  const emptyWithoutCountries = () => {
    if (state.countries?.length !== 0) return;
    // Nothing to ask: empty the per-country charts rather than leave the last answer up.
    for (const feed of FEEDS.filter((f) => f.perCountry)) {
      views.get(feed.id).render({ datasets: [] });
      document.querySelector(`[data-feed="${feed.id}"] .empty-note`).textContent =
        "No country selected: pick some above";
    }
  };
  const picker = new CountryPicker(pickerRoot, state.countries, (countries) => {
    writeQuery(countries, state.bucket);
    state.countries = countries;
    emptyWithoutCountries();
    past.reload(charts.filter((f) => f.perCountry).map((f) => f.id));
    for (const trend of trends) trend.countriesChanged();
    live.restart();
  });
  const learnCountries = (codes) => {
    if (picker.value() === null) picker.addPresent(codes); // answers for "all": what the server has
  };

  /** `url` with the feed's parameters as the page asks them now; null: nothing to ask. */
  function withParameters(feed, url) {
    if (feed.perCountry && state.countries !== null) {
      if (state.countries.length === 0) return null;
      url.searchParams.set("countries", state.countries.join(","));
    }
    if (feed.bucket) {
      if (state.bucket === "minute") url.searchParams.set("bucket", "minute");
      else url.searchParams.delete("bucket");
    }
    // Codes are letters and times digits: commas and colons read better unescaped.
    return url.href.replace(/%2C/gi, ",").replace(/%3A/gi, ":");
  }

  function urlFor(feed) {
    const path = feed === STATUS_FEED ? feed.path : endpoints.url(feed.id);
    return withParameters(feed, new URL(path, location.href));
  }

  /** The chart's history on this server (whichever server it polls live), with `query` and its parameters. */
  function historyUrl(feed, query) {
    const url = new URL(`api/history/${encodeURIComponent(feed.id)}`, location.href);
    for (const [name, value] of Object.entries(query)) url.searchParams.set(name, value);
    return withParameters(feed, url);
  }

  const past = new PastCharts(
    charts.map((feed) => ({ feed, root: document.querySelector(`[data-feed="${feed.id}"]`), view: null })),
    (feed, at) => historyUrl(feed, { at }),
    (problem) => {
      time.problem(problem);
      if (problem?.includes("keeps no history")) time.noHistory();
    },
  );
  const trends = charts
    .filter((feed) => feed.trend)
    .map(
      (feed) =>
        new TrendStrip(document.querySelector(`[data-feed="${feed.id}"]`), feed.trend, (from, to) =>
          historyUrl(feed, { from, to, step: "1h" }),
        ),
    );
  const time = new TimeControl(showTime, (available) => {
    for (const trend of trends) trend.enable(available);
  });

  for (const feed of FEEDS) {
    const root = document.querySelector(`[data-feed="${feed.id}"]`);
    const view =
      feed.id === "status"
        ? new feed.View(root, (codes) => picker.addPresent(codes))
        : new feed.View(root, learnCountries);
    views.set(feed.id, view);
    if (feed.id !== "status") past.cards.get(feed.id).view = view;
    const poller = new Poller({
      url: () => urlFor(feed),
      onBody:
        feed.id === "status"
          ? (body) => {
              view.render(body);
              time.learnStatus(body);
            }
          : (body) => {
              if (state.at !== null) return; // a live answer still on its way when a past minute was chosen
              view.render(body);
              past.live(feed.id);
            },
      onAnswer: () => {
        if (state.at === null || feed.id === "status") view.answered?.();
      },
    });
    pollers.set(feed.id, { feed, root, poller, badge: root.querySelector(".age"), shown: "" });
    showSource(feed, root, endpoints, false);
    if (feed === STATUS_FEED) poller.start();
  }

  const live = new LiveCharts({
    pollers: new Map(charts.map((feed) => [feed.id, pollers.get(feed.id).poller])),
    streamable: () =>
      charts.filter((feed) => endpoints.foreignHost(feed.id) === null && urlFor(feed) !== null).map((f) => f.id),
    params: () => {
      const params = new URLSearchParams();
      if (state.countries !== null && state.countries.length > 0) params.set("countries", state.countries.join(","));
      if (state.bucket === "minute") params.set("bucket", "minute");
      return params;
    },
    offered: typeof index.live === "string",
  });
  live.start();

  emptyWithoutCountries();

  /** Live (at null) or the past minute `at`: the charts poll, or ask the history once each. */
  function showTime(at) {
    if (at === state.at) return;
    const switched = (state.at === null) !== (at === null);
    state.at = at;
    for (const [id, { feed, root, poller }] of pollers) {
      if (id === "status") continue; // the sources' health is always now
      root.dataset.time = at === null ? "live" : "past";
      showSource(feed, root, endpoints, at !== null);
      if (at === null) poller.reset(); // its ETag is of a body not drawn: the next answer is whole
      if (switched) views.get(id).timeChanged?.();
    }
    if (at !== null) live.stop();
    else if (!document.hidden) live.start(true); // the bodies shown are the past's: every chart anew
    if (at === null) past.clear();
    else past.show(at);
    for (const trend of trends) trend.show(at);
    emptyWithoutCountries();
  }

  settingsDialog(
    document.querySelector("#settings"),
    document.querySelector("#open-settings"),
    endpoints,
    (changed) => {
      for (const id of changed) {
        const { feed, root, poller } = pollers.get(id);
        poller.reset();
        showSource(feed, root, endpoints, state.at !== null);
      }
      live.restart();
    },
  );

  const bucketButtons = document.querySelectorAll("[data-bucket]");
  const showBucket = () => {
    for (const button of bucketButtons)
      button.setAttribute("aria-pressed", String(button.dataset.bucket === state.bucket));
    for (const feed of charts.filter((f) => f.bucket))
      document.querySelector(`[data-feed="${feed.id}"] .subtitle`).textContent = BUCKET_TEXT[state.bucket];
  };
  for (const button of bucketButtons) {
    button.addEventListener("click", () => {
      state.bucket = button.dataset.bucket;
      writeQuery(state.countries, state.bucket);
      showBucket();
      past.reload(charts.filter((f) => f.bucket).map((f) => f.id));
      live.restart();
    });
  }
  showBucket();

  trafficPanel(document.querySelector(".health"), index); // only where the server has traffic controls

  time.start(); // the minute in the URL's fragment, if any

  setInterval(() => showFreshness(pollers, overall, charts.length, past, state.at), 200);
  document.addEventListener("visibilitychange", () => {
    // A hidden tab asks nothing; on return the charts stream (or poll) at once and catch up (at a
    // past minute, only the status strip polls).
    const status = pollers.get("status").poller;
    if (document.hidden) {
      status.stop();
      live.stop();
    } else {
      status.start();
      if (state.at === null) live.start();
    }
    for (const trend of trends) trend.pause(document.hidden);
  });
}

/** Names the server a chart polls when it is not this one: the health strip shows this server's
 * sources only (other servers' /api/status is not readable from here), so that chart's is unknown.
 * A past minute comes from this server's history, whichever server the chart polls live. */
function showSource(feed, root, endpoints, past) {
  const tag = root.querySelector(".card-source");
  if (!tag) return;
  const host = endpoints.foreignHost(feed.id);
  tag.hidden = host === null || past;
  tag.textContent = host === null ? "" : `from ${host}; its sources' health is unknown here`;
}

function showFreshness(pollers, overall, chartCount, past, at) {
  const now = performance.now();
  const counts = { waiting: 0, ok: 0, amber: 0, red: 0, idle: 0, past: 0 };
  for (const [id, entry] of pollers) {
    const fresh = (id !== "status" && past.badge(id)) || entry.poller.freshness(now);
    if (id !== "status") counts[fresh.level] += 1;
    const key = `${fresh.level}|${fresh.text}`;
    if (key === entry.shown) continue;
    entry.shown = key;
    entry.badge.dataset.level = fresh.level;
    entry.badge.title = fresh.title;
    entry.badge.querySelector(".age-text").textContent = fresh.text;
  }
  const worst = at !== null ? "past" : (LEVELS.findLast((level) => counts[level] > 0) ?? "ok");
  const polled = chartCount - counts.idle;
  const text = {
    waiting: "Connecting…",
    ok: `Live · all ${polled} charts up to date`,
    amber: `${counts.amber + counts.red} of ${polled} charts delayed`,
    red: `${counts.red} of ${polled} charts stale or unreachable`,
    past: `Not live · ${at?.slice(11, 16)} UTC`,
  }[worst];
  if (overall.dataset.level !== worst) overall.dataset.level = worst;
  const label = overall.querySelector(".overall-text");
  if (label.textContent !== text) label.textContent = text;
}

start();
