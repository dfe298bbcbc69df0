// The country picker of the per-country charts: search, multi-select, keyboard usable.
//
// The selection is either "all countries with data" (null: the charts' URLs carry no `countries`,
// and the server answers for every country it has) or an explicit list of codes, kept in the page's
// URL (?countries=ALB,ARG) so that a link or a reload shows the same countries.

import { COUNTRIES, countryName } from "./catalog.js";

const MAX_CHIPS = 6;

export class CountryPicker {
  /**
   * @param {HTMLElement} root  the .picker element of index.html
   * @param {string[]|null} selected  from the URL; null: all countries with data
   * @param {(selected: string[]|null) => void} onChange
   */
  constructor(root, selected, onChange) {
    this.root = root;
    this.selected = selected;
    this.onChange = onChange;
    this.present = new Set(); // codes the server has data for
    this.toggleButton = root.querySelector(".picker-toggle");
    this.panel = root.querySelector(".picker-panel");
    this.search = root.querySelector(".picker-search");
    this.list = root.querySelector(".picker-list");
    this.chips = root.querySelector(".picker-chips");
    this.count = root.querySelector(".picker-count");
    this.boxes = new Map(); // code -> its checkbox
    this.build();
    this.bind();
    this.refresh();
  }

  /** The explicit list, or null for all countries with data. */
  value() {
    return this.selected === null ? null : [...this.selected];
  }

  /** Tell the picker which countries have data (from /api/status and the charts' answers). */
  addPresent(codes) {
    let added = false;
    for (const code of codes) {
      if (!this.present.has(code)) {
        this.present.add(code);
        added = true;
      }
    }
    if (added) this.refresh();
  }

  build() {
    const items = [...COUNTRIES.values()]
      .sort((a, b) => a.name.localeCompare(b.name))
      .map(({ code, name }) => {
        const item = document.createElement("li");
        item.dataset.code = code;
        item.dataset.search = `${code} ${name}`.toLowerCase();
        const label = document.createElement("label");
        const box = document.createElement("input");
        box.type = "checkbox";
        box.value = code;
        const codeText = document.createElement("span");
        codeText.className = "code";
        codeText.textContent = code;
        const nameText = document.createElement("span");
        nameText.className = "name";
        nameText.textContent = name;
        const mark = document.createElement("span");
        mark.className = "has-data";
        label.append(box, codeText, nameText, mark);
        item.append(label);
        this.boxes.set(code, box);
        return item;
      });
    this.list.replaceChildren(...items);
  }

  bind() {
    this.toggleButton.addEventListener("click", () => (this.panel.hidden ? this.open() : this.close()));
    this.search.addEventListener("input", () => this.filter());
    this.search.addEventListener("keydown", (event) => {
      if (event.key === "ArrowDown") {
        event.preventDefault();
        this.visibleBoxes()[0]?.focus();
      } else if (event.key === "Enter") {
        event.preventDefault();
        const first = this.visibleBoxes()[0];
        if (first) this.toggle(first.value, !first.checked);
      }
    });
    this.list.addEventListener("change", (event) => this.toggle(event.target.value, event.target.checked));
    this.list.addEventListener("keydown", (event) => {
      if (event.key !== "ArrowDown" && event.key !== "ArrowUp") return;
      event.preventDefault();
      const boxes = this.visibleBoxes();
      const at = boxes.indexOf(document.activeElement);
      if (event.key === "ArrowUp" && at <= 0) this.search.focus();
      else boxes[Math.min(boxes.length - 1, at + (event.key === "ArrowDown" ? 1 : -1))]?.focus();
    });
    this.root.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && !this.panel.hidden) {
        event.preventDefault();
        this.close();
        this.toggleButton.focus();
      }
    });
    this.root.querySelector("[data-select=all]").addEventListener("click", () => this.set(null));
    this.root.querySelector("[data-select=none]").addEventListener("click", () => this.set([]));
    this.chips.addEventListener("click", (event) => {
      const chip = event.target.closest("button[data-code]");
      if (!chip) return;
      this.toggle(chip.dataset.code, false);
      // The chip is gone: keep the keyboard in the picker rather than at the top of the page.
      (this.chips.querySelector("button") ?? this.toggleButton).focus();
    });
    document.addEventListener("pointerdown", (event) => {
      if (!this.panel.hidden && !this.root.contains(event.target)) this.close();
    });
    this.root.addEventListener("focusout", (event) => {
      if (!this.panel.hidden && event.relatedTarget && !this.root.contains(event.relatedTarget)) this.close();
    });
  }

  open() {
    this.panel.hidden = false;
    this.toggleButton.setAttribute("aria-expanded", "true");
    this.search.focus();
  }

  close() {
    this.panel.hidden = true;
    this.toggleButton.setAttribute("aria-expanded", "false");
  }

  visibleBoxes() {
    return [...this.list.children].filter((item) => !item.hidden).map((item) => item.querySelector("input"));
  }

  filter() {
    const words = this.search.value.trim().toLowerCase().split(/\s+/).filter(Boolean);
    for (const item of this.list.children) {
      item.hidden = !words.every((word) => item.dataset.search.includes(word));
    }
  }

  /** Check or uncheck one country; leaving "all" starts from the countries with data. */
  toggle(code, on) {
    const next = new Set(this.selected ?? this.present);
    if (on) next.add(code);
    else next.delete(code);
    const all =
      this.present.size > 0 && next.size === this.present.size && [...next].every((c) => this.present.has(c));
    this.set(all ? null : [...next].sort());
  }

  set(selected) {
    this.selected = selected;
    this.refresh();
    this.onChange(this.value());
  }

  /** Bring the checkboxes, chips and summary in line with the selection. */
  refresh() {
    const chosen = new Set(this.selected ?? this.present);
    for (const [code, box] of this.boxes) {
      box.checked = chosen.has(code);
      box.closest("li").classList.toggle("present", this.present.has(code));
    }
    // Countries with data first, each group by name (a stable order: only the data changes it).
    const items = [...this.list.children];
    items.sort(
      (a, b) =>
        Number(this.present.has(b.dataset.code)) - Number(this.present.has(a.dataset.code)) ||
        countryName(a.dataset.code).localeCompare(countryName(b.dataset.code)),
    );
    if (items.some((item, i) => item !== this.list.children[i])) this.list.append(...items);

    const codes = [...chosen].sort();
    let summary;
    if (this.selected === null)
      summary = this.present.size
        ? `All ${this.present.size} countries with data`
        : "All countries with data";
    else if (codes.length === 0) summary = "No country selected";
    else summary = `${codes.length} ${codes.length === 1 ? "country" : "countries"} selected`;
    this.count.textContent = summary;
    const chips =
      this.selected === null
        ? []
        : codes.slice(0, MAX_CHIPS).map((code) => {
            const chip = document.createElement("button");
            chip.type = "button";
            chip.className = "chip";
            chip.dataset.code = code;
            chip.setAttribute("aria-label", `Remove ${countryName(code)}`);
            chip.title = `${countryName(code)}: remove`;
            chip.textContent = code;
            return chip;
          });
    if (this.selected !== null && codes.length > MAX_CHIPS) {
      const more = document.createElement("span");
      more.className = "chip-more";
      more.textContent = `+${codes.length - MAX_CHIPS}`;
      chips.push(more);
    }
    this.chips.replaceChildren(...chips);
  }
}
