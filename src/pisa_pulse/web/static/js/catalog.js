// What this server says it serves, asked once at start (GET api): the charts, in the order and with
// the titles and descriptions the cards show, and the PISA 2018 participants' names and ISO 3166
// numbers (which join a country to its shape on the map). Nothing here is a hand-kept copy.

/** code -> {code, name, iso}; filled by loadIndex() */
export const COUNTRIES = new Map();

/** ISO numeric (as world-atlas spells it, "008") -> PISA code */
export const CODE_BY_ISO = new Map();

const ORDER = new Map(); // code -> its place in the server's list (stable colours)

/** The display name of a code, or the code itself for one the server does not know. */
export function countryName(code) {
  return COUNTRIES.get(code)?.name ?? code;
}

/** A country's place in the server's list, or undefined. */
export function countryOrder(code) {
  return ORDER.get(code);
}

/** The server's index: its charts (checked) and countries (kept above); throws when unreachable. */
export async function loadIndex() {
  const response = await fetch("api", { headers: { Accept: "application/json" } });
  if (!response.ok) throw new Error(`GET api answered HTTP ${response.status}`);
  const index = await response.json();
  if (!Array.isArray(index?.charts) || !Array.isArray(index?.countries)) {
    throw new Error("GET api has no charts or countries list");
  }
  for (const [i, { code, name, iso }] of index.countries.entries()) {
    COUNTRIES.set(code, { code, name, iso });
    ORDER.set(code, i);
    if (iso) CODE_BY_ISO.set(iso, code);
  }
  return index;
}
