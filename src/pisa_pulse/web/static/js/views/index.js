// The views, by the contract (response shape) each renders. The server's chart list (GET api) names
// each chart's contract; a card's layout (its width in the 12-column grid) belongs to its view, and
// so does its per-country trend from the history (trend.js), where one helps reading: the map's
// colours say little of a value or of where it is going.

import { BelongingView } from "./belonging.js";
import { EscsMapView } from "./escs-map.js";
import { LearningHoursView } from "./learning-hours.js";
import { OverTimeView } from "./over-time.js";
import { PerformanceView } from "./performance.js";
import { SubmissionsView } from "./submissions.js";

// Each point's `value` (mean ESCS); a line never scaled finer than 0.05, so noise stays flat.
const ESCS_TREND = { key: "value", what: "mean ESCS", digits: 2, minRange: 0.05 };

export const VIEWS = new Map([
  ["count", { View: SubmissionsView, span: 4, className: "card-number" }],
  ["time-series", { View: OverTimeView, span: 8 }],
  ["country-points", { View: BelongingView, span: 5 }],
  ["country-value", { View: EscsMapView, span: 7, trend: ESCS_TREND }],
  ["country-hours", { View: LearningHoursView, span: 5 }],
  ["country-scores", { View: PerformanceView, span: 7 }],
]);
