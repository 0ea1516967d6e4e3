// Runs graphql-http's server audits (the GraphQL-over-HTTP spec's own conformance suite)
// against a running server: `node audit.mjs http://127.0.0.1:8000/graphql`.
//
// Every request carries `Authorization: Bearer $GRAPHQL_HTTP_AUDIT_TOKEN` (when set), so the
// audit checks the transport, not the authentication. Prints one JSON object per audit on its
// own line: {"id", "name", "status", "reason", "response"}, status being graphql-http's own
// (ok; failures: error for MUST, warn for SHOULD, notice for MAY), and for a failure the status
// code, content type and start of the body the server answered. Exits 0 when every audit ran
// (whatever their results: the caller decides), 2 on bad usage.
import { serverAudits } from 'graphql-http';

const url = process.argv[2];
if (!url) {
  console.error('usage: node audit.mjs <url of the GraphQL endpoint>');
  process.exit(2);
}
const token = process.env.GRAPHQL_HTTP_AUDIT_TOKEN;

// The body of each response, read once here: the audits consume the original's stream.
const bodies = new WeakMap();

async function fetchWithToken(input, init = {}) {
  const headers = new Headers(init.headers);
  if (token) headers.set('authorization', `Bearer ${token}`);
  const response = await fetch(input, { ...init, headers });
  bodies.set(response, response.clone().text());
  return response;
}

async function describe(response) {
  if (!response) return null;
  const body = await (bodies.get(response) ?? Promise.resolve(''));
  return {
    status: response.status,
    contentType: response.headers.get('content-type'),
    body: body.slice(0, 500),
  };
}

for (const { id, name, fn } of serverAudits({ url, fetchFn: fetchWithToken })) {
  let line;
  try {
    const result = await fn();
    line = {
      id,
      name,
      status: result.status,
      reason: result.reason ?? null,
      response: await describe(result.response),
    };
  } catch (fatal) {
    // graphql-http throws only when the audit could not run at all (server unreachable, ...).
    line = { id, name, status: 'error', reason: `audit could not run: ${fatal}`, response: null };
  }
  console.log(JSON.stringify(line));
}
