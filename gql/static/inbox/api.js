// How a front end calls wa-inbox: GraphQL over HTTP for queries and mutations, and
// graphql-transport-ws (the vendored graphql-ws client) for live updates.
// Nothing here knows about the page; inbox.js uses it.

const GRAPHQL_PATH = "/graphql";

/** A GraphQL error answer; `code` is the first error's `extensions.code`. */
export class GraphQLRequestError extends Error {
  constructor(errors, status) {
    super(errors.map((error) => error.message).join("; ") || `HTTP ${status}`);
    this.errors = errors;
    this.status = status;
    this.code = errors[0]?.extensions?.code ?? null;
    this.extensions = errors[0]?.extensions ?? {};
  }
}

/** Run one query or mutation with `token`; resolves to its `data`, rejects with GraphQLRequestError. */
export async function request(token, query, variables = {}) {
  const response = await fetch(GRAPHQL_PATH, {
    method: "POST",
    headers: {
      "Content-Type": "application/json",
      Accept: "application/graphql-response+json, application/json",
      Authorization: `Bearer ${token}`,
    },
    body: JSON.stringify({ query, variables }),
  });
  let body;
  try {
    body = await response.json();
  } catch {
    throw new GraphQLRequestError([{ message: `the server answered HTTP ${response.status}` }], response.status);
  }
  if (body.errors?.length) {
    throw new GraphQLRequestError(body.errors, response.status);
  }
  return body.data;
}

/**
 * The websocket of live updates. Reconnects by itself with capped exponential backoff and
 * jitter (a restarting server is not stampeded by every tab at once), and re-sends every
 * active subscription when it does.
 *
 * `onConnected(wasRetry)` runs on each (re)connection: after a retry the page refetches what
 * it may have missed while the socket was down. `onState(state)` gets "connecting",
 * "live", "reconnecting" or "signed-out" (the server refused the token: 4401/4403).
 */
export function liveClient(token, { onConnected, onState }) {
  let signedOut = false;
  const client = graphqlWs.createClient({
    url: new URL(GRAPHQL_PATH, location.href).href.replace(/^http/, "ws"),
    connectionParams: { Authorization: `Bearer ${token}` },
    lazy: false,
    keepAlive: 10_000,
    retryAttempts: Infinity,
    // A refused token will not become valid by retrying; anything else (a restart, a network
    // blip) is worth another try.
    shouldRetry: (event) => !isRefusedToken(event),
    retryWait: async (retries) => {
      const capped = Math.min(10_000, 250 * 2 ** retries);
      await new Promise((resolve) => setTimeout(resolve, capped / 2 + Math.random() * (capped / 2)));
    },
    on: {
      connecting: (isRetry) => onState(isRetry ? "reconnecting" : "connecting"),
      connected: (_socket, _payload, wasRetry) => {
        onState("live");
        onConnected(wasRetry);
      },
      closed: (event) => {
        if (isRefusedToken(event)) {
          signedOut = true;
          onState("signed-out");
        } else if (!signedOut) {
          onState("reconnecting");
        }
      },
    },
  });
  return client;
}

function isRefusedToken(event) {
  return event && (event.code === 4401 || event.code === 4403);
}

/**
 * Subscribe `query` on `client`; `onData(data)` gets each event's data.
 *
 * `onError(errors)` gets the GraphQL errors that end the subscription: RESYNC_REQUIRED when
 * this subscriber fell behind (refetch, then subscribe again), a validation error when the
 * server does not know the field. Returns the function that unsubscribes.
 */
export function subscribe(client, query, variables, { onData, onError }) {
  return client.subscribe(
    { query, variables },
    {
      next: (result) => {
        if (result.errors?.length) {
          onError(result.errors);
        } else {
          onData(result.data);
        }
      },
      error: (error) => onError(Array.isArray(error) ? error : [{ message: String(error?.reason || error) }]),
      complete: () => {},
    },
  );
}
