// Chart 3: early education (x, years) against sense of belonging (y), bubble size = submissions.
// Each bubble carries its country code, so colour is never the only key.

import { countryName } from "../catalog.js";
import { ContractError } from "../poller.js";
import { countryColour } from "../theme.js";
import { chartIn, codeOf, datasetsOf, numberOrNull, setEmpty } from "./base.js";

const format = new Intl.NumberFormat("en");

export class BelongingView {
  constructor(card, onCountries) {
    this.card = card;
    this.onCountries = onCountries;
    this.chart = chartIn(card.querySelector(".chart"), {
      grid: { left: 30, right: 20, top: 20, bottom: 34, containLabel: true },
      tooltip: {
        trigger: "item",
        formatter: ({ data }) =>
          `<b>${countryName(data.name)}</b> (${data.name})<br>` +
          `Early education: ${data.value[0]} years<br>` +
          `Sense of belonging: ${data.value[1].toFixed(3)}<br>` +
          `Submissions: ${format.format(data.value[2])}`,
      },
      xAxis: {
        type: "value",
        name: "Years in early childhood education (mean DURECEC)",
        nameLocation: "middle",
        nameGap: 28,
        minInterval: 1,
        min: (v) => Math.max(0, Math.floor(v.min) - 1),
        max: (v) => Math.ceil(v.max) + 1,
      },
      yAxis: {
        type: "value",
        name: "Sense of belonging (mean BELONG)",
        nameLocation: "middle",
        nameGap: 46,
        min: (v) => Math.floor((v.min - 0.05) * 10) / 10,
        max: (v) => Math.ceil((v.max + 0.05) * 10) / 10,
      },
      series: [
        {
          id: "countries",
          type: "scatter",
          data: [],
          itemStyle: { opacity: 0.78, borderColor: "rgba(255,255,255,0.55)", borderWidth: 1 },
          label: {
            show: true,
            position: "inside",
            formatter: "{b}",
            color: "#0b1020",
            fontSize: 10,
            fontWeight: 600,
          },
          labelLayout: { hideOverlap: true },
          emphasis: { focus: "self", itemStyle: { opacity: 1 } },
        },
      ],
    });
  }

  render(body) {
    const codes = [];
    const bubbles = [];
    let most = 1;
    let total = 0;
    for (const dataset of datasetsOf(body)) {
      const code = codeOf(dataset.id);
      codes.push(code);
      const point = Array.isArray(dataset.data) ? dataset.data[0] : undefined;
      if (point === undefined) throw new ContractError("a dataset has no data point");
      const x = numberOrNull(point.x, "x");
      const y = numberOrNull(point.y, "y");
      const submissions = numberOrNull(point.submissions, "submissions") ?? 0;
      total += submissions;
      if (x === null || y === null) continue; // no valid value for this country: nothing to place
      most = Math.max(most, submissions);
      bubbles.push({ name: code, value: [x, y, submissions], itemStyle: { color: countryColour(code) } });
    }
    this.chart.setOption({
      series: [{ id: "countries", data: bubbles, symbolSize: (v) => 14 + 34 * Math.sqrt(v[2] / most) }],
    });
    this.card.dataset.items = String(bubbles.length);
    this.card.dataset.total = String(total); // the submissions of the countries asked for (bench/live_bench.py)
    setEmpty(this.card, bubbles.length === 0);
    this.onCountries(codes);
  }
}
