// The Playground: a streamed chat with a model, stoppable, with its figures and cost.
import { PATHS, api, el, errorText, money } from "./core.js";

export async function playground(view) {
  const models = await api("GET", `${PATHS.admin}/models`);
  if (!models.models.length) {
    view.append(el("h1", {}, "Playground"), el("p", { class: "empty" }, "This key may use no model that Ollama has."));
    return;
  }
  const pick = el("select", { id: "pg-model" }, models.models.map((m) => el("option", { value: m.name }, m.name)));
  const system = el("textarea", { id: "pg-system", placeholder: "optional" });
  const prompt = el("textarea", { id: "pg-prompt", required: true });
  const send = el("button", { type: "submit", id: "pg-send" }, "Send");
  const stop = el("button", { type: "button", class: "danger", id: "pg-stop", disabled: true }, "Stop");
  const answer = el("div", { class: "answer card", id: "pg-answer", "aria-live": "polite" });
  const figures = el("p", { class: "muted", id: "pg-figures" });
  const error = el("p", { class: "error", role: "alert" });
  let controller = null;
  stop.addEventListener("click", () => controller && controller.abort());
  const form = el(
    "form",
    { class: "card" },
    el("label", { for: "pg-model" }, "Model"),
    pick,
    el("label", { for: "pg-system" }, "System prompt"),
    system,
    el("label", { for: "pg-prompt" }, "Prompt"),
    prompt,
    el("div", { class: "row" }, send, stop),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    answer.textContent = "";
    figures.textContent = "";
    const messages = [];
    if (system.value.trim()) messages.push({ role: "system", content: system.value });
    messages.push({ role: "user", content: prompt.value });
    const model = models.models.find((m) => m.name === pick.value);
    controller = new AbortController();
    send.disabled = true;
    stop.disabled = false;
    const started = performance.now();
    let firstToken = null;
    let final = null;
    let tokens = 0;
    try {
      const resp = await fetch(`${PATHS.api}/chat`, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-Requested-With": "aigateway" },
        body: JSON.stringify({ model: pick.value, messages, stream: true }),
        signal: controller.signal,
      });
      if (!resp.ok) {
        let doc = null;
        try {
          doc = await resp.json();
        } catch (_) {
          doc = null;
        }
        throw new Error(errorText(doc) || `HTTP ${resp.status}`);
      }
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      let buffered = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffered += decoder.decode(value, { stream: true });
        let newline;
        while ((newline = buffered.indexOf("\n")) >= 0) {
          const line = buffered.slice(0, newline).trim();
          buffered = buffered.slice(newline + 1);
          if (!line) continue;
          const part = JSON.parse(line);
          if (part.error) throw new Error(part.error);
          const text = part.message && part.message.content;
          if (text) {
            if (firstToken === null) firstToken = performance.now();
            tokens += 1;
            answer.append(document.createTextNode(text));
          }
          if (part.done) final = part;
        }
      }
    } catch (err) {
      if (err.name === "AbortError") error.textContent = "Stopped.";
      else error.textContent = err.message;
    } finally {
      send.disabled = false;
      stop.disabled = true;
      controller = null;
    }
    const seconds = (performance.now() - started) / 1000;
    const output = final ? final.eval_count : tokens;
    const perSecond = final && final.eval_duration ? output / (final.eval_duration / 1e9) : output / seconds;
    const parts = [
      `${output} output tokens`,
      `${perSecond.toFixed(1)} tokens/s`,
      firstToken === null ? "no token" : `first token after ${((firstToken - started) / 1000).toFixed(2)} s`,
    ];
    if (final && model && model.price) {
      const p = model.price;
      const exact = (final.prompt_eval_count || 0) * p.per_million_input * 1000 + output * p.per_million_output * 1000 + (final.total_duration || 0) * p.per_second;
      // As the gateway charges it: nano-units rounded up, shown in micro-units half up.
      const nano = p.per_request * 1000 + Math.ceil(exact / 1e6);
      parts.push(`cost ${money(Math.floor((nano + 500) / 1000))} ${models.currency}`);
    }
    figures.textContent = parts.join(" · ");
  });
  view.append(el("h1", {}, "Playground"), form, error, answer, figures);
}
