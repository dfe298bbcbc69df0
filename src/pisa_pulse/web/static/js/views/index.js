// The views, by the contract (response shape) each renders. The server's chart list (GET api) names
// each chart's contract; a card's layout (its width in the 12-column grid) belongs to its view.

import { BelongingView } from "./belonging.js";
import { EscsMapView } from "./escs-map.js";
import { LearningHoursView } from "./learning-hours.js";
import { OverTimeView } from "./over-time.js";
import { PerformanceView } from "./performance.js";
import { SubmissionsView } from "./submissions.js";

export const VIEWS = new Map([
  ["count", { View: SubmissionsView, span: 4, className: "card-number" }],
  ["time-series", { View: OverTimeView, span: 8 }],
  ["country-points", { View: BelongingView, span: 5 }],
  ["country-value", { View: EscsMapView, span: 7 }],
  ["country-hours", { View: LearningHoursView, span: 5 }],
  ["country-scores", { View: PerformanceView, span: 7 }],
]);
