// The dashboard: a card per chart the server lists (GET api) and the source-health strip, each
// polling its own URL every second. Builds the cards from the server's chart list (title,
// description, contract, parameters) and the views of those contracts (views/index.js), wires them
// to their pollers (poller.js), the country picker (picker.js) and the endpoint settings
// (settings.js) and, where the server allows it, the traffic panel (traffic.js); keeps the picker's
// countries and the time bucket in the URL.

import { loadIndex } from "./catalog.js";
import { CountryPicker } from "./picker.js";
import { Poller } from "./poller.js";
import { Endpoints, settingsDialog } from "./settings.js";
import { registerTheme } from "./theme.js";
import { trafficPanel } from "./traffic.js";
import { HealthView } from "./views/health.js";
import { VIEWS } from "./views/index.js";

const STATUS_FEED = {
  id: "status",
  title: "Source status (health strip)",
  path: "api/status",
  View: HealthView,
};
const LEVELS = ["ok", "waiting", "amber", "red"]; // worse to the right (idle charts do not count)
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
  const state = readQuery();
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
  });
  const learnCountries = (codes) => {
    if (picker.value() === null) picker.addPresent(codes); // answers for "all": what the server has
  };

  function urlFor(feed) {
    const url = new URL(feed === STATUS_FEED ? feed.path : endpoints.url(feed.id), location.href);
    if (feed.perCountry && state.countries !== null) {
      if (state.countries.length === 0) return null;
      url.searchParams.set("countries", state.countries.join(","));
    }
    if (feed.bucket) {
      if (state.bucket === "minute") url.searchParams.set("bucket", "minute");
      else url.searchParams.delete("bucket");
    }
    return url.href.replace(/%2C/gi, ","); // codes are letters: commas read better unescaped
  }

  for (const feed of FEEDS) {
    const root = document.querySelector(`[data-feed="${feed.id}"]`);
    const view =
      feed.id === "status"
        ? new feed.View(root, (codes) => picker.addPresent(codes))
        : new feed.View(root, learnCountries);
    views.set(feed.id, view);
    const poller = new Poller({
      url: () => urlFor(feed),
      onBody: (body) => view.render(body),
      onAnswer: () => view.answered?.(),
    });
    pollers.set(feed.id, { feed, root, poller, badge: root.querySelector(".age"), shown: "" });
    showSource(feed, root, endpoints);
    poller.start();
  }

  emptyWithoutCountries();

  settingsDialog(
    document.querySelector("#settings"),
    document.querySelector("#open-settings"),
    endpoints,
    (changed) => {
      for (const id of changed) {
        const { feed, root, poller } = pollers.get(id);
        poller.reset();
        showSource(feed, root, endpoints);
      }
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
    });
  }
  showBucket();

  trafficPanel(document.querySelector(".health"), index); // only where the server has traffic controls

  setInterval(() => showFreshness(pollers, overall, charts.length), 200);
  document.addEventListener("visibilitychange", () => {
    // A hidden tab asks nothing; on return every chart polls at once and catches up.
    for (const { poller } of pollers.values()) document.hidden ? poller.stop() : poller.start();
  });
}

/** Names the server a chart polls when it is not this one: the health strip shows this server's
 * sources only (other servers' /api/status is not readable from here), so that chart's is unknown. */
function showSource(feed, root, endpoints) {
  const tag = root.querySelector(".card-source");
  if (!tag) return;
  const host = endpoints.foreignHost(feed.id);
  tag.hidden = host === null;
  tag.textContent = host === null ? "" : `from ${host}; its sources' health is unknown here`;
}

function showFreshness(pollers, overall, chartCount) {
  const now = performance.now();
  const counts = { waiting: 0, ok: 0, amber: 0, red: 0, idle: 0 };
  for (const [id, entry] of pollers) {
    const fresh = entry.poller.freshness(now);
    if (id !== "status") counts[fresh.level] += 1;
    const key = `${fresh.level}|${fresh.text}`;
    if (key === entry.shown) continue;
    entry.shown = key;
    entry.badge.dataset.level = fresh.level;
    entry.badge.title = fresh.title;
    entry.badge.querySelector(".age-text").textContent = fresh.text;
  }
  const worst = LEVELS.findLast((level) => counts[level] > 0) ?? "ok";
  const polled = chartCount - counts.idle;
  const text = {
    waiting: "Connecting…",
    ok: `Live · all ${polled} charts up to date`,
    amber: `${counts.amber + counts.red} of ${polled} charts delayed`,
    red: `${counts.red} of ${polled} charts stale or unreachable`,
  }[worst];
  if (overall.dataset.level !== worst) overall.dataset.level = worst;
  const label = overall.querySelector(".overall-text");
  if (label.textContent !== text) label.textContent = text;
}

start();
