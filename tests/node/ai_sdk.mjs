// The Vercel AI SDK (ai + @ai-sdk/openai-compatible) through the gateway, driven by
// tests/test_client_quirks.py. From the environment: GATEWAY, KEY; CALL is "text"
// (generateText), "object" (generateObject with a schema) or "output" (generateText with
// Output.object, what ai 7 says to use instead of generateObject); MAX_RETRIES, when set,
// is passed as maxRetries; STRUCTURED=1 sets supportsStructuredOutputs. Prints what the
// SDK returned, or the error it threw, as one JSON line.
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";
import { generateObject, generateText, Output } from "ai";
import { z } from "zod";

const provider = createOpenAICompatible({
  name: "aigateway",
  baseURL: `${process.env.GATEWAY}/v1`,
  apiKey: process.env.KEY,
  supportsStructuredOutputs: process.env.STRUCTURED === "1",
});
const model = provider.chatModel("llama3.2");
const retries = process.env.MAX_RETRIES === undefined ? {} : { maxRetries: Number(process.env.MAX_RETRIES) };

// A zod schema: the SDK checks the answer against it (a bare jsonSchema() is not checked).
const city = z.object({ name: z.string(), population: z.number().int() });

try {
  if (process.env.CALL === "object") {
    const { object } = await generateObject({ model, schema: city, prompt: "A city?", ...retries });
    console.log(JSON.stringify({ ok: true, object }));
  } else if (process.env.CALL === "output") {
    const output = Output.object({ schema: city });
    const result = await generateText({ model, output, prompt: "A city?", ...retries });
    console.log(JSON.stringify({ ok: true, object: result.output }));
  } else {
    const { text } = await generateText({ model, prompt: "hi", ...retries });
    console.log(JSON.stringify({ ok: true, text }));
  }
} catch (error) {
  const last = error.lastError ?? error;
  console.log(
    JSON.stringify({
      ok: false,
      name: error.name,
      reason: error.reason ?? null,
      attempts: error.errors?.length ?? 1,
      status: last.statusCode ?? null,
      message: String(error.message).slice(0, 300),
    }),
  );
}
