// Drives a client generated from schemas/openapi.json (openapi-typescript types +
// openapi-fetch) against a live API: a page, a scroll to the end, one CDR by id, stats
// and a 400. Written against the generated types under `strict`, so a document whose
// types do not describe the answers fails to compile; prints what it read as JSON for
// tests/api/test_generated_clients.py to compare with the API's own answers.
import createClient from "openapi-fetch";
import type { components, paths } from "./schema.js";

type Cdr = components["schemas"]["Cdr"];
type Stats = components["schemas"]["Stats"];

declare const process: { env: Record<string, string | undefined>; stdout: { write(text: string): void } };

const client = createClient<paths>({
  baseUrl: process.env.CDR_URL,
  headers: { Authorization: `Bearer ${process.env.CDR_TOKEN}` },
});

function fail(what: string, detail: unknown): never {
  throw new Error(`${what}: ${JSON.stringify(detail)}`);
}

async function main(): Promise<void> {
  const page = await client.GET("/v1/cdr", { params: { query: { page: 1, limit: 50 } } });
  if (page.data === undefined || !("total" in page.data)) fail("a page was expected", page.error);
  const total: number = page.data.total;

  const scrolled: Cdr[] = [];
  let batch = await client.GET("/v1/cdr", { params: { query: { scroll: "true", limit: 1000 } } });
  for (;;) {
    if (batch.data === undefined || !("scroll_id" in batch.data)) fail("a scroll batch was expected", batch.error);
    scrolled.push(...batch.data.data);
    const scrollId: string | null = batch.data.scroll_id;
    if (scrollId === null) break;
    batch = await client.GET("/v1/cdr", { params: { query: { scroll_id: scrollId } } });
  }

  const first = scrolled[0] ?? fail("no CDR to look up", scrolled);
  const one = await client.GET("/v1/cdr/{id}", { params: { path: { id: first.id } } });
  if (one.data === undefined) fail("the CDR was expected", one.error);
  const answered: string = one.data.time_answered; // "" when unanswered: a string either way

  const stats = await client.GET("/v1/cdr/stats", { params: { query: { group_by: "day" } } });
  if (stats.data === undefined) fail("stats were expected", stats.error);
  const body: Stats = stats.data;
  const calls = body.data.reduce((sum, group) => sum + group.calls, 0);

  const bad = await client.GET("/v1/cdr", { params: { query: { limit: 0 } } });
  if (bad.error === undefined) fail("a 400 was expected", bad.data);
  const error: components["schemas"]["Error"] = bad.error;

  process.stdout.write(
    JSON.stringify({
      page: { total, ids: page.data.data.map((record) => record.id) },
      scrolled,
      one: { record: one.data, answered },
      stats: { body, calls },
      bad: { status: bad.response.status, code: error.error.code, param: error.error.param ?? null },
    }),
  );
}

await main();
