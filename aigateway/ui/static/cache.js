// The Overview's response cache (CACHE_SIZE on): this gateway's hit rate, hits, misses,
// answers and bytes held, and Clear, which empties it (DELETE /admin/cache). Each gateway
// keeps its own cache, so the figures are the one that answered's, and say so.
import { PATHS, api, el, number, refresh, stat } from "./core.js";

export function cacheStats(cache) {
  if (!cache.enabled) return [];
  const s = cache.stats;
  const lookups = s.hits + s.misses;
  // (hits / lookups as a percentage, one decimal at most; none before the first lookup)
  const rate = lookups ? `${Number(((100 * s.hits) / lookups).toFixed(1))}%` : "—";
  const error = el("p", { class: "error", role: "alert" });
  // (nothing held: nothing to clear)
  const clear = el("button", { type: "button", class: "danger", id: "cache-clear", disabled: s.entries === 0 }, "Clear");
  clear.addEventListener("click", async () => {
    const held = `${number(s.entries)} answer${s.entries === 1 ? "" : "s"}`;
    if (!window.confirm(`Clear this gateway's response cache (${held})? Those requests go to the upstreams again.`)) return;
    clear.disabled = true;
    try {
      await api("DELETE", `${PATHS.admin}/cache`);
      refresh();
    } catch (err) {
      error.textContent = err.message;
      clear.disabled = false;
    }
  });
  const since = "since this gateway started";
  return [
    el("h2", {}, "Response cache, this gateway"),
    el(
      "div",
      { class: "grid", id: "cache" },
      stat("Hit rate", rate, `hits / (hits + misses) ${since}`),
      stat("Hits", number(s.hits), since),
      stat("Misses", number(s.misses), since),
      stat("Answers held", number(s.entries)),
      stat(`Bytes held, of ${bytes(s.capacity_bytes)}`, bytes(s.bytes), "CACHE_SIZE, overheads counted"),
    ),
    el("div", { class: "row" }, clear, error),
  ];
}

// 1536 -> "1.5 KiB": the unit that keeps the figure under 1024.
export function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit ? Number(value.toFixed(1)) : value} ${units[unit]}`;
}
