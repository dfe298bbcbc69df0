// Chart 2: submissions per hour (or per minute), a smooth line over a soft area.

/* global echarts */

import { ContractError } from "../poller.js";
import { INK, OKABE_ITO } from "../theme.js";
import { chartIn, datasetsOf, setEmpty } from "./base.js";

export class OverTimeView {
  constructor(card) {
    this.card = card;
    this.chart = chartIn(card.querySelector(".chart"), {
      grid: { left: 8, right: 16, top: 16, bottom: 8, containLabel: true },
      tooltip: { trigger: "axis", valueFormatter: (v) => `${v} submissions` },
      xAxis: { type: "category", boundaryGap: false, data: [], axisLabel: { hideOverlap: true } },
      yAxis: { type: "value", minInterval: 1 },
      series: [
        {
          id: "submissions",
          name: "Submissions",
          type: "line",
          smooth: 0.35,
          symbol: "circle",
          symbolSize: 6,
          lineStyle: { width: 2.5, color: OKABE_ITO.skyBlue },
          itemStyle: { color: OKABE_ITO.skyBlue, borderColor: INK.card, borderWidth: 1.5 },
          areaStyle: {
            color: new echarts.graphic.LinearGradient(0, 0, 0, 1, [
              { offset: 0, color: "rgba(86, 180, 233, 0.38)" },
              { offset: 1, color: "rgba(86, 180, 233, 0.02)" },
            ]),
          },
          data: [],
        },
      ],
    });
  }

  render(body) {
    const [first] = datasetsOf(body);
    const points = first?.data;
    if (!Array.isArray(points)) throw new ContractError("no data list");
    const labels = [];
    const counts = [];
    for (const point of points) {
      if (typeof point?.x !== "string" || !Number.isFinite(point?.y)) throw new ContractError("bad point");
      labels.push(point.x);
      counts.push(point.y);
    }
    this.chart.setOption({
      xAxis: { data: labels },
      series: [{ id: "submissions", data: counts, showSymbol: counts.length <= 24 }],
    });
    this.card.dataset.items = String(counts.length);
    this.card.dataset.total = String(counts.reduce((sum, n) => sum + n, 0));
    setEmpty(this.card, counts.length === 0, "No submissions in this window");
  }
}
