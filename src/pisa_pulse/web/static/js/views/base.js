// What every chart view shares: one ECharts instance per card, resized with its box, and checks
// that a body follows the contract before anything is drawn.

/* global echarts */

import { ContractError } from "../poller.js";
import { BASE_OPTION } from "../theme.js";

/** An ECharts instance in `el`, made once and reused for every update (no re-creation per poll). */
export function chartIn(el, option) {
  const chart = echarts.init(el, "pulse", { renderer: "canvas" });
  chart.setOption({ ...BASE_OPTION, ...option });
  let pending = false;
  new ResizeObserver(() => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      chart.resize();
    });
  }).observe(el);
  return chart;
}

/** body.datasets, checked to be an array of objects. */
export function datasetsOf(body) {
  const datasets = body?.datasets;
  if (!Array.isArray(datasets) || datasets.some((d) => d === null || typeof d !== "object")) {
    throw new ContractError("no datasets list");
  }
  return datasets;
}

/** A number, or null for a missing value (`null` in the contract). */
export function numberOrNull(value, what) {
  if (value === null || value === undefined) return null;
  if (typeof value !== "number" || !Number.isFinite(value))
    throw new ContractError(`${what} is not a number`);
  return value;
}

/** A 3-letter country code from a dataset. */
export function codeOf(value) {
  if (typeof value !== "string" || !/^[A-Za-z]{3}$/.test(value)) throw new ContractError("bad country code");
  return value.toUpperCase();
}

/** Shows or hides the card's "no data" note. */
export function setEmpty(card, empty, text = "No data for the selected countries yet") {
  const note = card.querySelector(".empty-note");
  if (!note) return;
  if (note.textContent !== text) note.textContent = text;
  note.hidden = !empty;
}

/** Category labels: upright when they fit, slanted when not, every one shown. */
export function categoryLabels(chart, count) {
  const perLabel = (chart.getWidth() - 70) / Math.max(1, count);
  return {
    interval: 0,
    rotate: perLabel >= 32 ? 0 : perLabel >= 16 ? 45 : 90,
    fontSize: perLabel >= 14 ? 11 : 9,
  };
}
