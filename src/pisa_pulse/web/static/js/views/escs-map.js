// Chart 4: the world coloured by mean ESCS (economic, social and cultural status), viridis scale
// with its legend. Countries too small for a 1:110m map, and PISA economies that are no ISO country,
// are listed under the map with the same colours.

/* global echarts, topojson */

import { CODE_BY_ISO, countryName } from "../catalog.js";
import { INK, VIRIDIS, viridisAt } from "../theme.js";
import { chartIn, codeOf, datasetsOf, numberOrNull, setEmpty } from "./base.js";

const ATLAS = "static/vendor/world-atlas-2.0.2-countries-110m.json";
const ANTARCTICA = "010"; // no PISA country; leaving it out gives the others the room

/** Loads the shapes once and registers them as the map "pisa-world"; resolves to the codes drawn. */
async function loadWorld() {
  const response = await fetch(ATLAS);
  if (!response.ok) throw new Error(`the world map did not load (HTTP ${response.status})`);
  const topology = await response.json();
  const world = topojson.feature(topology, topology.objects.countries);
  world.features = world.features.filter((f) => f.id !== ANTARCTICA);
  const drawn = new Set();
  for (const feature of world.features) {
    const { type, coordinates } = feature.geometry;
    for (const polygon of type === "Polygon" ? [coordinates] : coordinates) polygon.forEach(foldAntimeridian);
    // ECharts keys regions by name: PISA countries get their code, others keep their own name.
    const code = CODE_BY_ISO.get(feature.id);
    if (code) drawn.add(code);
    feature.properties = { name: code ?? feature.properties.name };
  }
  echarts.registerMap("pisa-world", world);
  return drawn;
}

/**
 * A ring that crosses the antimeridian (eastern Russia, Fiji) jumps from 180° to -180° and would
 * streak across a flat map: fold its few far-side points onto the 180° meridian of its own side.
 */
function foldAntimeridian(ring) {
  if (!ring.some((point, i) => i > 0 && Math.abs(point[0] - ring[i - 1][0]) > 180)) return;
  const east = ring.filter((point) => point[0] > 0).length * 2 >= ring.length;
  for (const point of ring) {
    if (east ? point[0] < 0 : point[0] > 0) point[0] = east ? 180 : -180;
  }
}

export class EscsMapView {
  constructor(card, onCountries) {
    this.card = card;
    this.onCountries = onCountries;
    this.offMap = card.querySelector(".off-map");
    this.offMapKey = "";
    this.pending = null;
    this.drawn = null;
    this.chart = chartIn(card.querySelector(".chart"), {
      tooltip: {
        trigger: "item",
        formatter: (p) => {
          if (!/^[A-Z]{3}$/.test(p.name))
            return `${p.name}<br><span style="color:${INK.muted}">not in PISA 2018</span>`;
          const value = Number.isFinite(p.value) ? p.value.toFixed(3) : "not selected or no data";
          return `<b>${countryName(p.name)}</b> (${p.name})<br>Mean ESCS: ${value}`;
        },
      },
      visualMap: {
        type: "continuous",
        min: -1,
        max: 1,
        precision: 1,
        calculable: false,
        orient: "horizontal",
        left: "center",
        bottom: 0,
        itemWidth: 12,
        itemHeight: 200,
        text: ["higher ESCS", "lower"],
        textGap: 8,
        inRange: { color: VIRIDIS },
        textStyle: { color: INK.muted, fontSize: 11 },
      },
    });
    this.ready = loadWorld().then((drawn) => {
      this.drawn = drawn;
      this.chart.setOption({
        series: [
          {
            id: "escs",
            type: "map",
            map: "pisa-world",
            roam: false,
            top: 4,
            bottom: 44,
            left: 4,
            right: 4,
            itemStyle: { areaColor: INK.noData, borderColor: "#0b1020", borderWidth: 0.6 },
            emphasis: {
              label: { show: false },
              itemStyle: { borderColor: "#ffffff", borderWidth: 1.2, areaColor: "#3b4766" },
            },
            select: { disabled: true },
            data: [],
          },
        ],
      });
      if (this.pending) this.draw(this.pending);
    });
    this.ready.catch((error) => {
      setEmpty(card, true, "The world map did not load");
      console.error(error);
    });
  }

  render(body) {
    const values = [];
    const codes = [];
    for (const dataset of datasetsOf(body)) {
      const code = codeOf(dataset.id);
      codes.push(code);
      const value = numberOrNull(dataset.value, "value");
      if (value !== null) values.push({ name: code, value });
    }
    this.onCountries(codes);
    this.card.dataset.items = String(values.length);
    setEmpty(this.card, values.length === 0);
    if (this.drawn === null)
      this.pending = values; // drawn once the shapes are in
    else this.draw(values);
  }

  draw(values) {
    this.pending = null;
    const numbers = values.map((v) => v.value);
    let min = Math.floor(Math.min(...numbers, 0) * 2) / 2;
    let max = Math.ceil(Math.max(...numbers, 0) * 2) / 2;
    if (max - min < 1) [min, max] = [min - 0.5, max + 0.5];
    this.chart.setOption({ visualMap: { min, max }, series: [{ id: "escs", data: values }] });
    this.listOffMap(
      values.filter((v) => !this.drawn.has(v.name)),
      min,
      max,
    );
  }

  listOffMap(values, min, max) {
    const key = JSON.stringify([values, min, max]);
    if (key === this.offMapKey) return; // unchanged: leave the DOM alone
    this.offMapKey = key;
    const items = values.map(({ name, value }) => {
      const item = document.createElement("li");
      item.title = `${countryName(name)}: mean ESCS ${value.toFixed(3)}`;
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = viridisAt(value, min, max);
      item.append(swatch, `${name} ${value.toFixed(2)}`);
      return item;
    });
    this.offMap.querySelector("ul").replaceChildren(...items);
    this.offMap.hidden = items.length === 0;
  }
}
