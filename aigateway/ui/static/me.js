// My usage: the signed-in key's limits, budgets and usage.
import { usageCharts } from "./charts.js";
import { PATHS, api, el, money, named, number, stat, table, usageStats } from "./core.js";
import { utcText } from "./forms.js";

export async function myUsage(view) {
  // The key's own figures, in the cards and the charts alike (an admin's too: the
  // gateway's are on the Overview).
  const [me, charts] = await Promise.all([api("GET", `${PATHS.admin}/me`), usageCharts("me", ["total", "model"])]);
  const limits = me.current.limits || {};
  view.append(
    el("h1", {}, named(`${me.key.user} / ${me.key.key_name}`)),
    el("p", { class: "muted" }, `Role ${me.key.role}; key ${me.key.prefix}…; status ${me.key.status}`),
    el("h2", {}, "Limits and what is left"),
    el(
      "div",
      { class: "grid" },
      stat("Requests this minute", `${me.current.requests_this_minute} of ${limits.rpm || "∞"}`),
      stat("Requests this hour", `${me.current.requests_this_hour} of ${limits.rph || "∞"}`),
      stat("Tokens today", `${number(me.current.tokens_today)} of ${limits.tokens_per_day ? number(limits.tokens_per_day) : "∞"}`),
      stat("At once", `${me.current.in_flight} of ${limits.max_concurrent || "∞"}`),
    ),
    el("h2", {}, "Budgets"),
    me.budgets.length
      ? table(
          [
            { title: "Budget of", cell: (b) => b.owner },
            { title: "Period", cell: (b) => b.period },
            { title: `Amount (${me.currency})`, num: true, cell: (b) => money(b.amount) },
            { title: "Spent", num: true, cell: (b) => money(b.spent) },
            { title: "Remaining", num: true, cell: (b) => money(b.remaining) },
            { title: "Resets (UTC)", cell: (b) => (b.resets_at ? utcText(new Date(b.resets_at * 1000).toISOString()) : "never") },
          ],
          me.budgets,
          "",
        )
      : el("p", { class: "empty" }, "No budget: spending is not capped."),
    ...usageStats("This key, last 24 hours", me.usage.last_24h),
    ...usageStats("This key, last 7 days", me.usage.last_7d),
    el("h2", {}, "This key over time"),
    charts,
  );
}
