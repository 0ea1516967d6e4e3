// Apollo Client's own persisted-queries link against a running wa-inbox, as a front end uses it:
// `node persisted_queries.mjs <http url of /graphql> <bearer token>`.
//
// Two clients (two browser tabs) each run the same query and a query with variables, hashed
// queries over GET. Prints {results, exchanges} as JSON: what each query answered, and every
// HTTP request the link sent with the server's answer (tests/test_persisted_documents.py reads
// it).
import { createHash } from "node:crypto";

import { ApolloClient, HttpLink, InMemoryCache, gql } from "@apollo/client";
import { PersistedQueryLink } from "@apollo/client/link/persisted-queries";

const [url, token] = process.argv.slice(2);
if (!url || !token) {
  console.error("usage: node persisted_queries.mjs <http url of /graphql> <bearer token>");
  process.exit(2);
}

const exchanges = [];

async function recordingFetch(input, init) {
  const response = await fetch(input, init);
  exchanges.push({
    method: init?.method ?? "GET",
    url: String(input),
    body: init?.body ? JSON.parse(init.body) : null,
    status: response.status,
    answer: await response.clone().json(),
  });
  return response;
}

function newClient() {
  // `createPersistedQueryLink(options)` is the same link: a deprecated alias in Apollo Client 4.
  const persisted = new PersistedQueryLink({
    sha256: (text) => createHash("sha256").update(text).digest("hex"),
    useGETForHashedQueries: true,
  });
  const http = new HttpLink({
    uri: url,
    headers: { authorization: `Bearer ${token}` },
    fetch: recordingFetch,
  });
  return new ApolloClient({ link: persisted.concat(http), cache: new InMemoryCache() });
}

const BADGE = gql`
  query Badge {
    unreadCount
  }
`;
const UNREAD_THREADS = gql`
  query UnreadThreads($first: Int!) {
    threads(first: $first, unreadOnly: true) {
      edges {
        node {
          phone
          unreadCount
        }
      }
    }
  }
`;

const results = [];
for (const tab of [newClient(), newClient()]) {
  for (const [query, variables] of [
    [BADGE, {}],
    [UNREAD_THREADS, { first: 5 }],
  ]) {
    const { data } = await tab.query({ query, variables, fetchPolicy: "network-only" });
    results.push(data);
  }
}
console.log(JSON.stringify({ results, exchanges }));
