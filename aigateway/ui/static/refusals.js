// Refused requests (the gateway's own 401, 402, 403 and 429 answers), as tables.
import { el, number, table } from "./core.js";

// Requests the gateway refused itself (no key, limits, budgets, allow-lists), by reason
// and by user; those refused before a key was known count under "(no key)".
export function refusedTables(refused, span) {
  const byUser = [...refused.per_user];
  if (refused.without_key.requests) byUser.push({ user: "(no key)", ...refused.without_key });
  const reasons = (r) => Object.entries(r.by_reason).map(([reason, n]) => `${reason} ${number(n)}`).join(", ");
  return [
    ...refusedBrief(refused, span),
    el("h2", {}, `Refused per user, ${span}`),
    table(
      [
        { title: "User", cell: (r) => r.user },
        { title: "Requests", num: true, cell: (r) => number(r.requests) },
        { title: "Reasons", cell: reasons },
      ],
      byUser.sort((a, b) => b.requests - a.requests).slice(0, 10),
      "Nothing refused.",
    ),
  ];
}

// The refusals of one filter, key or user: a line with the total and a table by reason;
// `null` (a filter by model, route, status or cached: refusals have none) says so.
export function refusedBrief(refused, span) {
  if (refused === null || refused === undefined) {
    return [el("h2", {}, "Refused"), el("p", { class: "empty refused-none" }, "Refused requests are not counted by model, route, status or response cache.")];
  }
  return [
    el("h2", {}, `Refused, ${span}: ${number(refused.requests)}`),
    table(
      [
        { title: "Reason", cell: (r) => r[0] },
        { title: "Requests", num: true, cell: (r) => number(r[1]) },
      ],
      Object.entries(refused.by_reason).sort((a, b) => b[1] - a[1]),
      "Nothing refused.",
    ),
  ];
}
