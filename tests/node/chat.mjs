// A streamed chat through the gateway with the official ollama npm client.
// GATEWAY and KEY come from the environment; prints what the stream delivered as JSON.
import { Ollama } from "ollama";

const client = new Ollama({
  host: process.env.GATEWAY,
  headers: { Authorization: `Bearer ${process.env.KEY}` },
});
const stream = await client.chat({
  model: "llama3.2",
  messages: [{ role: "user", content: "hi" }],
  stream: true,
});
let text = "";
let last = null;
for await (const part of stream) {
  text += part.message.content;
  last = part;
}
console.log(JSON.stringify({ text, done: last.done, eval_count: last.eval_count }));
