// Chart 6 (ours): mean reading, mathematics and science scores per country, as a dot plot.
// Each domain has its own colour and its own shape.

import { countryName } from "../catalog.js";
import { OKABE_ITO } from "../theme.js";
import { categoryLabels, chartIn, codeOf, datasetsOf, numberOrNull, setEmpty } from "./base.js";

const DOMAINS = [
  { key: "reading", name: "Reading", symbol: "circle", colour: OKABE_ITO.skyBlue },
  { key: "mathematics", name: "Mathematics", symbol: "diamond", colour: OKABE_ITO.orange },
  { key: "science", name: "Science", symbol: "triangle", colour: OKABE_ITO.bluishGreen },
];

export class PerformanceView {
  constructor(card, onCountries) {
    this.card = card;
    this.onCountries = onCountries;
    this.chart = chartIn(card.querySelector(".chart"), {
      grid: { left: 8, right: 12, top: 40, bottom: 8, containLabel: true },
      legend: { top: 0, right: 4, itemWidth: 12, itemHeight: 12 },
      tooltip: {
        trigger: "axis",
        axisPointer: { type: "line", lineStyle: { color: "#3a4769" } },
        formatter: (items) =>
          `<b>${countryName(items[0].name)}</b> (${items[0].name})<br>` +
          items
            .map((p) => `${p.marker}${p.seriesName}: ${p.value === "-" ? "no data" : p.value}`)
            .join("<br>"),
      },
      xAxis: { type: "category", data: [], splitLine: { show: true } },
      yAxis: {
        type: "value",
        name: "mean score",
        nameTextStyle: { align: "left" },
        min: (v) => Math.floor((v.min - 10) / 20) * 20,
        max: (v) => Math.ceil((v.max + 10) / 20) * 20,
      },
      series: DOMAINS.map((d) => ({
        id: d.key,
        name: d.name,
        type: "scatter",
        symbol: d.symbol,
        symbolSize: d.symbol === "triangle" ? 13 : 11,
        itemStyle: { color: d.colour, borderColor: "#0b1020", borderWidth: 1 },
        data: [],
      })),
    });
  }

  render(body) {
    const codes = [];
    const scores = DOMAINS.map(() => []);
    let shown = 0;
    for (const dataset of datasetsOf(body)) {
      codes.push(codeOf(dataset.id));
      DOMAINS.forEach((d, i) => {
        const score = numberOrNull(dataset[d.key], d.key);
        scores[i].push(score ?? "-");
        if (score !== null) shown += 1;
      });
    }
    this.chart.setOption({
      xAxis: { data: codes, axisLabel: categoryLabels(this.chart, codes.length) },
      series: DOMAINS.map((d, i) => ({ id: d.key, data: scores[i] })),
    });
    this.card.dataset.items = String(shown);
    setEmpty(this.card, shown === 0);
    this.onCountries(codes);
  }
}
