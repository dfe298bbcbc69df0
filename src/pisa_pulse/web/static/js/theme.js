// Colours and the ECharts theme. Palettes are colour-blind safe: Okabe-Ito for categories
// (with shapes or labels beside colour wherever colour carries meaning) and viridis for values.

/* global echarts */

import { countryOrder } from "./catalog.js";

// Okabe & Ito (2008), without black (the background is dark); yellow last, the hardest on white text.
export const OKABE_ITO = {
  skyBlue: "#56B4E9",
  orange: "#E69F00",
  bluishGreen: "#009E73",
  reddishPurple: "#CC79A7",
  vermillion: "#D55E00",
  blue: "#0072B2",
  yellow: "#F0E442",
};
const CATEGORICAL = Object.values(OKABE_ITO);

// Viridis, sampled at 8 points from just above its darkest end (which vanishes on a dark card).
export const VIRIDIS = [
  "#482475",
  "#414487",
  "#355f8d",
  "#2a788e",
  "#21918c",
  "#22a884",
  "#7ad151",
  "#fde725",
];

export const INK = {
  text: "#e7ecf6",
  muted: "#9aa7c2",
  faint: "#5d6a88",
  grid: "#26314d",
  axis: "#3a4769",
  card: "#131b2e",
  noData: "#242d44",
};

/** A country's colour, the same in every chart and whatever else is selected. */
export function countryColour(code) {
  const i = countryOrder(code) ?? [...code].reduce((sum, ch) => sum + ch.charCodeAt(0), 0);
  return CATEGORICAL[i % CATEGORICAL.length];
}

/** The viridis colour of `value` on the scale [min, max] (for swatches outside the chart). */
export function viridisAt(value, min, max) {
  const t = max > min ? Math.min(1, Math.max(0, (value - min) / (max - min))) : 0.5;
  const pos = t * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(pos));
  const [a, b] = [VIRIDIS[i], VIRIDIS[i + 1]].map((hex) =>
    [1, 3, 5].map((k) => parseInt(hex.slice(k, k + 2), 16)),
  );
  const mix = a.map((channel, k) => Math.round(channel + (b[k] - channel) * (pos - i)));
  return `rgb(${mix.join(",")})`;
}

const FONT = 'Inter, "Segoe UI", system-ui, -apple-system, Roboto, "Helvetica Neue", Arial, sans-serif';

/** Registers the dashboard's ECharts theme once; returns its name. */
export function registerTheme() {
  const axis = {
    axisLine: { lineStyle: { color: INK.axis } },
    axisTick: { lineStyle: { color: INK.axis } },
    axisLabel: { color: INK.muted, fontSize: 11 },
    splitLine: { lineStyle: { color: INK.grid } },
    nameTextStyle: { color: INK.muted, fontSize: 11 },
  };
  echarts.registerTheme("pulse", {
    color: CATEGORICAL,
    backgroundColor: "transparent",
    textStyle: { fontFamily: FONT, color: INK.text },
    categoryAxis: { ...axis, splitLine: { show: false, lineStyle: { color: INK.grid } } },
    valueAxis: axis,
    legend: { textStyle: { color: INK.muted, fontSize: 12 }, inactiveColor: INK.faint },
    tooltip: {
      backgroundColor: "rgba(12, 18, 33, 0.96)",
      borderColor: INK.axis,
      textStyle: { color: INK.text, fontSize: 12 },
      extraCssText: "border-radius: 8px; box-shadow: 0 6px 24px rgba(0,0,0,.4);",
    },
    visualMap: { textStyle: { color: INK.muted } },
  });
  return "pulse";
}

/** True when the reader asked the system for less motion: charts and the number then jump. */
export const REDUCED_MOTION = matchMedia("(prefers-reduced-motion: reduce)").matches;

/** Options every chart shares: smooth updates, screen-reader descriptions. */
export const BASE_OPTION = {
  animation: !REDUCED_MOTION,
  animationDuration: 500,
  animationDurationUpdate: 450, // well inside a poll: every update settles before the next
  animationEasingUpdate: "cubicOut",
  aria: { enabled: true },
};
