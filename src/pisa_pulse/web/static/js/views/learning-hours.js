// Chart 5: learning hours per week (round(mean TMINS / 60)), one bar per country.

import { countryName } from "../catalog.js";
import { OKABE_ITO } from "../theme.js";
import { categoryLabels, chartIn, codeOf, datasetsOf, numberOrNull, setEmpty } from "./base.js";

export class LearningHoursView {
  constructor(card, onCountries) {
    this.card = card;
    this.onCountries = onCountries;
    this.chart = chartIn(card.querySelector(".chart"), {
      grid: { left: 8, right: 12, top: 28, bottom: 8, containLabel: true },
      tooltip: {
        trigger: "axis",
        axisPointer: { type: "shadow" },
        formatter: ([p]) =>
          `<b>${countryName(p.name)}</b> (${p.name})<br>${p.value} hours of learning per week`,
      },
      xAxis: { type: "category", data: [] },
      yAxis: { type: "value", name: "hours / week", minInterval: 1, nameTextStyle: { align: "left" } },
      series: [
        {
          id: "hours",
          type: "bar",
          data: [],
          barMaxWidth: 38,
          itemStyle: { color: OKABE_ITO.orange, borderRadius: [4, 4, 0, 0] },
          label: { show: true, position: "top", color: "#e7ecf6", fontSize: 11 },
        },
      ],
    });
  }

  render(body) {
    const codes = [];
    const hours = [];
    for (const dataset of datasetsOf(body)) {
      codes.push(codeOf(dataset.country));
      hours.push(numberOrNull(dataset.hours, "hours") ?? "-");
    }
    this.chart.setOption({
      xAxis: { data: codes, axisLabel: categoryLabels(this.chart, codes.length) },
      series: [{ id: "hours", data: hours, label: { show: codes.length <= 30 } }],
    });
    const shown = hours.filter((h) => h !== "-").length;
    this.card.dataset.items = String(shown);
    setEmpty(this.card, shown === 0);
    this.onCountries(codes);
  }
}
