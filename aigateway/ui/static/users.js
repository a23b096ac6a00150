// The Users page (admins): budgets, notes, emails, spend, disable and enable.
import { PATHS, api, el, money, named, openBelow, stacked, table, refresh } from "./core.js";
import { budgetFields, budgetText, changeForm, priorityMark, prioritySpec } from "./forms.js";
import { refusedBrief } from "./refusals.js";

export async function usersView(view) {
  const doc = await api("GET", `${PATHS.admin}/users`);
  const search = el("input", { id: "user-search", type: "search", placeholder: "name or email" });
  const status = el("select", { id: "user-status" }, ["all", "active", "disabled"].map((v) => el("option", { value: v }, v)));
  const listing = el("div", {});
  const show = () => {
    const q = search.value.trim().toLowerCase();
    const rows = doc.users.filter(
      (u) =>
        (status.value === "all" || u.status === status.value) &&
        (!q || u.user.toLowerCase().includes(q) || (u.email || "").toLowerCase().includes(q)),
    );
    listing.replaceChildren(
      table(
        [
          { title: "User", cell: (u) => u.user },
          { title: "Email", cell: (u) => u.email ?? "" },
          { title: "Status", cell: (u) => stacked(u.status, ...priorityMark(u.priority)) },
          { title: "Active keys", num: true, cell: (u) => u.active_keys },
          { title: `Budget (${PATHS.currency})`, wrap: true, cell: (u) => budgetText(u.budget) },
          { title: "Actions", act: true, cell: (u) => userActions(u) },
        ],
        rows,
        doc.users.length ? "No user matches." : "No users yet: creating a key makes its user.",
      ),
    );
  };
  search.addEventListener("input", show);
  status.addEventListener("change", show);
  view.append(
    el("h1", {}, "Users"),
    el("div", { class: "row" }, el("div", {}, el("label", { for: "user-search" }, "Search"), search), el("div", {}, el("label", { for: "user-status" }, "Status"), status)),
    listing,
  );
  show();
}

export function editUser(user, tr) {
  const budget = budgetFields("budget_", user.budget);
  const specs = [
    {
      key: "email",
      label: "Email",
      hint: "Empty: none",
      input: el("input", { type: "email", value: user.email ?? "" }),
      parse: (text) => text || null,
      api: ["email"],
    },
    {
      key: "note",
      label: "Note",
      input: el("input", { value: user.note ?? "" }),
      parse: (text) => text || null,
      api: ["note"],
    },
    prioritySpec(user.priority, null),
    ...budget.specs,
  ];
  const form = changeForm("edit-user", ["Change ", named(user.user)], specs, { budget: budget.group }, (body) =>
    api("PATCH", `${PATHS.admin}/users/${encodeURIComponent(user.user)}`, body),
  );
  openBelow(tr, form);
  form.querySelector("input").focus();
}

export function userActions(user) {
  const edit = el("button", { type: "button", class: "quiet", "data-action": "edit", "aria-label": `Change ${user.user}` }, "Change");
  edit.addEventListener("click", () => editUser(user, edit.closest("tr")));
  const failed = (button, err) => openBelow(button.closest("tr"), el("p", { class: "error", role: "alert" }, err.message));
  const check = el("button", { type: "button", class: "quiet", "data-action": "spend", "aria-label": `Spend of ${user.user}` }, "Spend");
  check.addEventListener("click", async () => {
    try {
      const name = encodeURIComponent(user.user);
      const [r, doc] = await Promise.all([
        api("GET", `${PATHS.admin}/users/${name}/budget`),
        api("GET", `${PATHS.admin}/users/${name}`),
      ]);
      const head = r.budget
        ? `${r.user}: spent ${money(r.budget.spent)} of ${money(r.budget.amount)} ${r.currency} (${r.budget.period}); ${money(r.budget.remaining)} left; resets ${r.budget.resets_at || "never"}`
        : `${r.user}: no budget; spent ${money(r.spent)} ${r.currency} this month`;
      openBelow(
        check.closest("tr"),
        el(
          "div",
          { class: "card", id: "budget-report" },
          el("p", {}, head),
          table(
            [
              { title: "Key", cell: (k) => k.key_name },
              { title: "Spent", num: true, cell: (k) => money(k.spent) },
              { title: "Own budget", cell: (k) => (k.budget ? `${money(k.budget.spent)} of ${money(k.budget.amount)} ${k.budget.period}` : "none") },
            ],
            r.keys,
            "No active keys.",
          ),
          ...refusedBrief(doc.refused, "last 7 days"),
        ),
      );
    } catch (err) {
      failed(check, err);
    }
  });
  const toggle = el("button", { type: "button", class: user.status === "active" ? "danger" : "quiet", "data-action": "toggle" }, user.status === "active" ? "Disable" : "Enable");
  toggle.addEventListener("click", async () => {
    const disable = user.status === "active";
    if (disable && !window.confirm(`Disable ${user.user}? All its keys stop working at once.`)) return;
    try {
      await api("PATCH", `${PATHS.admin}/users/${encodeURIComponent(user.user)}`, { disabled: disable });
      refresh();
    } catch (err) {
      failed(toggle, err);
    }
  });
  return el("div", { class: "actions" }, edit, check, toggle);
}
