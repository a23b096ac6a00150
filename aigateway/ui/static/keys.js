// The Keys page (admins): create, find, change and revoke keys.
import { PATHS, api, el, money, named, number, openBelow, stacked, table, refresh } from "./core.js";
import { budgetFields, budgetText, changeForm, priorityMark, prioritySpec, showSecret, utcInputValue, utcText, wholeNumber } from "./forms.js";
import { refusedBrief } from "./refusals.js";

export async function keysView(view) {
  const [doc, stats] = await Promise.all([
    api("GET", `${PATHS.admin}/keys`),
    api("GET", `${PATHS.admin}/stats?since=${Math.floor(Date.now() / 1000) - 86400}&parts=per_key,rate_limits`),
  ]);
  const use = new Map(stats.rate_limits.map((u) => [u.key_id, u]));
  const spend = new Map(stats.per_key.map((k) => [k.key_id, k.cost]));
  const secretBox = el("div", { id: "new-key", "aria-live": "polite" });
  const search = el("input", { id: "key-search", type: "search", placeholder: "user or key name" });
  const statusFilter = el(
    "select",
    { id: "key-status" },
    ["active", "all", "revoked", "expired", "user disabled"].map((v) => el("option", { value: v }, v)),
  );
  const roleFilter = el("select", { id: "key-role" }, ["all", "admin", "user"].map((v) => el("option", { value: v }, v)));
  const listing = el("div", {});
  const showList = () => {
    const q = search.value.trim().toLowerCase();
    const rows = doc.keys.filter(
      (k) =>
        (!q || k.user.toLowerCase().includes(q) || k.key_name.toLowerCase().includes(q)) &&
        (statusFilter.value === "all" || k.status === statusFilter.value) &&
        (roleFilter.value === "all" || k.role === roleFilter.value),
    );
    listing.replaceChildren(
      table(
        [
          { title: "User / key", cell: (k) => stacked(k.user, k.key_name, `${k.prefix}…`) },
          {
            title: "Role / status",
            cell: (k) => stacked(k.role, k.status, ...priorityMark(k.queue_class, !k.priority), `id ${k.id}`),
          },
          { title: "Models", cell: (k) => (k.models ? k.models.join(", ") : "all") },
          { title: "Use now of its limits", wrap: true, cell: (k) => useText(use.get(k.id)) },
          { title: `Spent 24 h (${PATHS.currency})`, num: true, cell: (k) => money(spend.get(k.id) ?? 0) },
          { title: `Budget (${PATHS.currency})`, wrap: true, cell: (k) => budgetText(k.budget, "") },
          {
            title: "Expires / last used (UTC)",
            cell: (k) => el("div", { class: "stacked" }, el("span", { class: "keep" }, utcText(k.expires) || "never"), el("span", { class: "keep muted" }, utcText(k.last_used) || "never used")),
          },
          { title: "Actions", act: true, cell: (k) => (k.status === "active" ? keyActions(k) : "") },
        ],
        rows,
        doc.keys.length ? "No key matches." : "No keys yet: create the first one above.",
      ),
    );
  };
  search.addEventListener("input", showList);
  statusFilter.addEventListener("change", showList);
  roleFilter.addEventListener("change", showList);
  const fresh = keySpecs({}, true);
  const created = (made, form) => {
    showSecret(secretBox, made);
    doc.keys.push(made);
    form.reset();
    showList();
  };
  const form = changeForm(
    "create-key",
    "Create a key",
    [
      { key: "user", label: "User", hint: "A new name makes the user", input: el("input", { autocomplete: "off" }), parse: (t) => t, required: true, api: ["user"] },
      { key: "name", label: "Key name", input: el("input", { autocomplete: "off" }), parse: (t) => t, required: true, api: ["name"] },
      ...fresh.specs,
    ],
    fresh.groups,
    (body) => api("POST", `${PATHS.admin}/keys`, body),
    { saveLabel: "Create", done: created, cancel: false, more: "Limits, models, expiry and budget" },
  );
  view.append(
    el("h1", {}, "Keys"),
    form,
    secretBox,
    el(
      "div",
      { class: "row" },
      el("div", {}, el("label", { for: "key-search" }, "Search"), search),
      el("div", {}, el("label", { for: "key-status" }, "Status"), statusFilter),
      el("div", {}, el("label", { for: "key-role" }, "Role"), roleFilter),
    ),
    listing,
  );
  showList();
}

export function useText(u) {
  if (!u) return "";
  const l = u.limits || {};
  const parts = [`${u.requests_this_minute}/${l.rpm || "∞"} a minute`];
  if (l.rph) parts.push(`${u.requests_this_hour}/${l.rph} an hour`);
  if (l.tokens_per_day) parts.push(`${number(u.tokens_today)}/${number(l.tokens_per_day)} tokens today`);
  if (l.max_concurrent) parts.push(`${u.in_flight}/${l.max_concurrent} at once`);
  return parts.join(", ");
}

// The limits a key's form shows, by their API names, in people's words.
export const LIMITS = [
  ["rpm", "Requests per minute"],
  ["rph", "Requests per hour"],
  ["tokens_per_day", "Tokens per day"],
  ["max_concurrent", "Requests at once"],
];

// The fields of a key, as they are (`key`), or empty for a new one (`more`: folded).
export function keySpecs(key, more = false) {
  const budget = budgetFields("budget_", key.budget);
  const specs = [
    {
      key: "role",
      label: "Role",
      input: el("select", {}, ["user", "admin"].map((r) => el("option", { value: r, selected: r === (key.role || "user") }, r))),
      parse: (text) => text,
    },
    ...LIMITS.map(([name, label]) => ({
      key: name,
      label,
      hint: "Empty: the gateway's default; 0: no limit",
      input: el("input", { inputmode: "numeric", value: key[name] ?? "" }),
      parse: wholeNumber(label, null),
      api: [name],
      more: more && name !== "rpm",
    })),
    {
      key: "models",
      label: "Models it may use",
      hint: "Names or patterns such as llama3*, separated by commas; empty: all",
      input: el("input", { value: key.models ? key.models.join(", ") : "" }),
      parse: (text) => {
        const patterns = text.split(",").map((p) => p.trim()).filter(Boolean);
        return patterns.length ? patterns : null;
      },
      api: ["models", "model name or pattern", "model patterns"],
      verbatim: true, // (its messages read well as they are)
      more,
    },
    {
      key: "expires_at",
      label: "Expires (UTC)",
      hint: "Date and time in UTC; empty: never",
      input: el("input", { type: "datetime-local", step: "60", value: utcInputValue(key.expires) }),
      parse: (text) => {
        if (text === "") return null;
        const when = Date.parse(`${text}Z`) / 1000;
        if (Number.isNaN(when)) throw new Error("A date and time, such as 2030-01-31 13:45.");
        if (when <= Date.now() / 1000) throw new Error("A time in the future (UTC).");
        return when;
      },
      api: ["expires_at"],
      more,
    },
    prioritySpec(key.priority, "its user's", more),
    ...budget.specs,
  ];
  return { specs, groups: { budget: budget.group } };
}

export function editKey(key, tr) {
  const { specs, groups } = keySpecs(key);
  const form = changeForm("edit-key", ["Change ", named(`${key.user}/${key.key_name}`)], specs, groups, (body) =>
    api("PATCH", `${PATHS.admin}/keys/${key.id}`, body),
  );
  openBelow(tr, form);
  form.querySelector("select, input").focus();
}

export function keyActions(key) {
  const edit = el("button", { type: "button", class: "quiet", "data-action": "edit", "aria-label": `Change ${key.user}/${key.key_name}` }, "Change");
  edit.addEventListener("click", () => editKey(key, edit.closest("tr")));
  const revoke = el("button", { type: "button", class: "danger", "data-action": "revoke", "aria-label": `Revoke ${key.user}/${key.key_name}` }, "Revoke");
  revoke.addEventListener("click", async () => {
    if (!window.confirm(`Revoke ${key.user}/${key.key_name}? It stops working at once.`)) return;
    try {
      await api("DELETE", `${PATHS.admin}/keys/${key.id}`);
      refresh();
    } catch (err) {
      openBelow(revoke.closest("tr"), el("p", { class: "error", role: "alert" }, err.message));
    }
  });
  const details = el("button", { type: "button", class: "quiet", "data-action": "details", "aria-label": `Details of ${key.user}/${key.key_name}` }, "Details");
  details.addEventListener("click", async () => {
    try {
      const doc = await api("GET", `${PATHS.admin}/keys/${key.id}`);
      openBelow(
        details.closest("tr"),
        el(
          "div",
          { class: "card", id: "key-details" },
          el("p", {}, named(`${doc.user}/${doc.key_name}`), ` — last used ${utcText(doc.last_used) || "never"} (UTC)`),
          ...refusedBrief(doc.refused, "last 7 days"),
        ),
      );
    } catch (err) {
      openBelow(details.closest("tr"), el("p", { class: "error", role: "alert" }, err.message));
    }
  });
  return el("div", { class: "actions" }, edit, details, revoke);
}
