// The reference inbox: a thread list with unread badges, one thread's messages, a reply box,
// all live over one websocket. Plain JavaScript modules, no build step, no framework: read
// it top to bottom as an example of calling wa-inbox from a browser.
import { GraphQLRequestError, liveClient, request, subscribe } from "./api.js";

const TOKEN_KEY = "wa-inbox.token";
const THREADS_PAGE = 20;
const MESSAGES_PAGE = 30;

// ---------------------------------------------------------------------------------------
// The GraphQL documents the page sends. Each asks for what the page shows, nothing more.

const THREAD_FIELDS = `
  id phone contactName unreadCount lastMessageAt serviceWindowExpiresAt status
`;
const MESSAGE_FIELDS = `
  id threadId direction source status body type sentAt mediaId
  deliveryError { code title }
  replyToProviderId
  replyTo { id body type source status }
`;

const THREADS = `
  query Threads($first: Int!, $after: String) {
    unreadCount
    threads(first: $first, after: $after) {
      edges { node { ${THREAD_FIELDS} lastMessage { ${MESSAGE_FIELDS} } } }
      pageInfo { hasNextPage endCursor }
    }
  }`;

const THREAD_WITH_MESSAGES = `
  query Thread($id: ID!, $last: Int!, $before: String) {
    thread(id: $id) {
      ${THREAD_FIELDS}
      lastMessage { ${MESSAGE_FIELDS} }
      messages(last: $last, before: $before) {
        edges { node { ${MESSAGE_FIELDS} } }
        pageInfo { hasPreviousPage startCursor }
      }
    }
  }`;

const MARK_READ = `
  mutation MarkRead($threadId: ID!) {
    markRead(threadId: $threadId) { totalUnread thread { id unreadCount } }
  }`;

const SEND_MESSAGE = `
  mutation SendMessage($threadId: ID!, $body: String!) {
    sendMessage(threadId: $threadId, body: $body) { ${MESSAGE_FIELDS} }
  }`;

const NEW_MESSAGE = `
  subscription NewMessage {
    newMessage { ${MESSAGE_FIELDS} thread { ${THREAD_FIELDS} } }
  }`;

const UNREAD_COUNT_CHANGED = `
  subscription UnreadCountChanged { unreadCountChanged { threadId unreadCount totalUnread } }`;

const THREAD_MERGED = `
  subscription ThreadMerged { threadMerged { fromThreadId intoThreadId } }`;

const MESSAGE_STATUS_CHANGED = `
  subscription MessageStatusChanged {
    messageStatusChanged { messageId threadId status deliveryError { code title outcomeUnknown } }
  }`;

// ---------------------------------------------------------------------------------------
// State: what the server told us, keyed by id. The DOM is redrawn from it.

const state = {
  token: null,
  live: null, // the graphql-ws client
  totalUnread: 0,
  threads: new Map(), // id -> thread (with lastMessage)
  threadsCursor: null,
  moreThreads: false,
  open: null, // the open thread: see openThread
};

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------------------
// Sign-in: a pasted token kept in sessionStorage (this tab only; never in a URL).

async function start() {
  wireEvents();
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) {
    inBackground(() => signIn(saved));
  } else {
    await showSignIn();
  }
}

async function showSignIn(message = "") {
  $("inbox").hidden = true;
  $("sign-out").hidden = true;
  $("sign-in").hidden = false;
  $("sign-in-error").textContent = message;
  setConnection("offline");
  // Only a server signing with a generated development secret (`make run` without
  // AUTH_SECRET) answers this; everywhere else it is a 404 and the field stays empty.
  if (!$("token").value) {
    const response = await fetch("/inbox/development-token", { cache: "no-store" }).catch(() => null);
    if (response?.ok) {
      $("token").value = (await response.json()).token;
      $("development-token-note").hidden = false;
    }
  }
  $("token").focus();
}

async function signIn(rawToken) {
  if (state.signingIn) {
    return; // a second Enter while the first sign-in is checked
  }
  state.signingIn = true;
  try {
    await checkAndSignIn(rawToken);
  } finally {
    state.signingIn = false;
  }
}

async function checkAndSignIn(rawToken) {
  const token = rawToken.trim().replace(/^Bearer\s+/i, "");
  try {
    await request(token, "query SignIn { unreadCount }");
  } catch (error) {
    if (error instanceof GraphQLRequestError) {
      sessionStorage.removeItem(TOKEN_KEY); // refused; a server that is down may take it later
    }
    await showSignIn(error instanceof GraphQLRequestError ? error.message : "The server could not be reached: try again.");
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  state.token = token;
  $("sign-in").hidden = true;
  $("inbox").hidden = false;
  $("sign-out").hidden = false;
  await loadThreads({ reset: true });
  connectLive();
  $("thread-list").focus();
}

function signOut(message = "") {
  if (state.token === null) {
    return; // already signed out (the socket and a request may both report a refused token)
  }
  sessionStorage.removeItem(TOKEN_KEY);
  showNotice("");
  state.live?.dispose();
  state.live = null;
  state.token = null;
  state.threads.clear();
  state.open = null;
  $("token").value = "";
  $("thread-list").replaceChildren();
  closeThreadView();
  showSignIn(message);
}

// ---------------------------------------------------------------------------------------
// Calling the API as the signed-in user. A refused token (expired, revoked) signs out; other
// failures of work nobody waits for (a click, a live event) are shown in the notice bar.

async function call(query, variables) {
  try {
    return await request(state.token, query, variables);
  } catch (error) {
    if (error instanceof GraphQLRequestError && error.code === "UNAUTHENTICATED") {
      signOut("The server refused the token (expired or revoked): sign in again.");
    }
    throw error;
  }
}

function inBackground(task) {
  task().then(
    () => showNotice(""),
    (error) => {
      if (state.token) {
        showNotice(error instanceof GraphQLRequestError ? error.message : "The server could not be reached; retrying when it is back.");
      }
    },
  );
}

function showNotice(text) {
  $("notice").textContent = text;
  $("notice").hidden = !text;
}

// ---------------------------------------------------------------------------------------
// The thread list.

async function loadThreads({ reset }) {
  const data = await call(THREADS, {
    // A reset after a reconnection refetches as many threads as were shown.
    first: reset ? Math.max(THREADS_PAGE, state.threads.size) : THREADS_PAGE,
    after: reset ? null : state.threadsCursor,
  });
  if (reset) {
    state.threads.clear();
  }
  for (const { node } of data.threads.edges) {
    state.threads.set(node.id, node);
  }
  state.threadsCursor = data.threads.pageInfo.endCursor;
  state.moreThreads = data.threads.pageInfo.hasNextPage;
  setTotalUnread(data.unreadCount);
  renderThreadList();
}

function renderThreadList() {
  // Latest activity first, as `threads` returns them; live events may reorder.
  const threads = [...state.threads.values()].sort(
    (a, b) => (b.lastMessageAt ?? "").localeCompare(a.lastMessageAt ?? "") || Number(b.id) - Number(a.id),
  );
  const items = threads.map((thread) => {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "thread-row";
    button.dataset.threadId = thread.id;
    if (state.open?.id === thread.id) {
      button.setAttribute("aria-current", "true");
    }
    // Read as it shows: name, time, preview, then how many are unread (the badge is visual).
    button.append(
      element("span", "thread-name", threadName(thread)),
      element("time", "thread-time", formatTime(thread.lastMessageAt)),
      element("span", "thread-preview", preview(thread.lastMessage)),
    );
    if (thread.unreadCount > 0) {
      button.append(element("span", "visually-hidden", `, ${thread.unreadCount} unread`));
    }
    const badge = element("span", "badge", String(thread.unreadCount));
    badge.hidden = thread.unreadCount === 0;
    badge.setAttribute("aria-hidden", "true");
    button.append(badge);
    button.addEventListener("click", () => inBackground(() => openThread(thread.id)));
    item.append(button);
    return item;
  });
  // Live events redraw the list: whoever was on a row with the keyboard stays on it.
  const focused = document.activeElement?.dataset?.threadId;
  $("thread-list").replaceChildren(...items);
  if (focused) {
    document.querySelector(`.thread-row[data-thread-id="${focused}"]`)?.focus();
  }
  $("no-threads").hidden = threads.length > 0;
  $("load-more-threads").hidden = !state.moreThreads;
}

function setTotalUnread(total) {
  state.totalUnread = total;
  const badge = $("total-unread");
  badge.textContent = String(total);
  badge.hidden = total === 0;
  badge.setAttribute("aria-label", `${total} unread messages`);
  document.title = total > 0 ? `(${total}) Inbox` : "Inbox";
}

// ---------------------------------------------------------------------------------------
// One thread: its messages, oldest first; older pages load when scrolled to the top.

async function openThread(threadId) {
  state.open = {
    id: threadId,
    messages: new Map(), // id -> message
    earlyStatuses: new Map(), // message id -> a messageStatusChanged event for a message not here yet
    olderCursor: null,
    moreOlder: false,
    loadingOlder: false,
  };
  document.body.classList.add("showing-thread");
  $("thread-view").hidden = false;
  $("no-thread-open").hidden = true;
  $("message-list").replaceChildren();
  $("reply-body").value = "";
  $("reply-error").textContent = "";
  renderThreadList();
  await loadMessages({ older: false });
  scrollToNewest();
  $("reply-body").focus();
  await markRead(threadId);
}

async function loadMessages({ older }) {
  const open = state.open;
  const data = await call(THREAD_WITH_MESSAGES, {
    id: open.id,
    last: MESSAGES_PAGE,
    before: older ? open.olderCursor : null,
  });
  if (state.open !== open) {
    return; // another thread was opened meanwhile
  }
  if (!data.thread) {
    closeThreadView();
    return;
  }
  const { messages, ...thread } = data.thread;
  rememberThread(thread);
  for (const { node } of messages.edges) {
    // A live tick may be ahead of what this page read (or have come before the message).
    const known = open.messages.get(node.id) ?? open.earlyStatuses.get(node.id);
    open.earlyStatuses.delete(node.id);
    const ahead = known && known.status !== node.status && !replacesStatus(known.status, node.status);
    open.messages.set(node.id, ahead ? { ...node, status: known.status, deliveryError: known.deliveryError } : node);
  }
  // Only the first page (or an older one) says where the next older page starts; a refetch
  // of the newest messages after a reconnection leaves it as it was.
  if (older || open.olderCursor === null) {
    open.olderCursor = messages.pageInfo.startCursor;
    open.moreOlder = messages.pageInfo.hasPreviousPage;
  }
  renderThread();
}

async function loadOlderMessages() {
  const open = state.open;
  if (!open || !open.moreOlder || open.loadingOlder) {
    return;
  }
  open.loadingOlder = true;
  const scroller = $("message-scroller");
  const fromBottom = scroller.scrollHeight - scroller.scrollTop;
  try {
    await loadMessages({ older: true });
  } finally {
    open.loadingOlder = false;
  }
  // Keep the message that was on screen where it was.
  scroller.scrollTop = scroller.scrollHeight - fromBottom;
}

async function markRead(threadId) {
  const data = await call(MARK_READ, { threadId });
  // unreadCountChanged tells every other tab; this one need not wait for it.
  updateThread(data.markRead.thread.id, { unreadCount: data.markRead.thread.unreadCount });
  setTotalUnread(data.markRead.totalUnread);
}

function closeThreadView() {
  state.open = null;
  document.body.classList.remove("showing-thread");
  $("thread-view").hidden = true;
  $("no-thread-open").hidden = false;
  clearTimeout(replyWindowTimer);
  renderThreadList();
}

function renderThread() {
  const open = state.open;
  const thread = state.threads.get(open.id);
  if (!thread) {
    return; // a refetch of the list is under way; loadMessages draws it when it has it
  }
  $("thread-title").textContent = threadName(thread);
  $("thread-subtitle").textContent = thread.contactName && thread.phone ? thread.phone : "";
  const messages = [...open.messages.values()].sort(
    (a, b) => a.sentAt.localeCompare(b.sentAt) || Number(a.id) - Number(b.id),
  );
  const nearBottom = isScrolledToNewest();
  showMessages(messages);
  $("load-older").hidden = !open.moreOlder;
  renderReplyBox(thread);
  if (nearBottom) {
    scrollToNewest();
  }
}

/**
 * Put `messages` in the list in order, touching only the ones that are new or changed: the
 * list is an aria-live log, and a screen reader announces every node added to it.
 */
function showMessages(messages) {
  const list = $("message-list");
  const shown = new Map([...list.children].map((node) => [node.dataset.messageId, node]));
  let previous = null;
  for (const message of messages) {
    const drawn = renderMessage(message);
    let node = shown.get(message.id);
    if (!node) {
      node = drawn;
    } else if (node.outerHTML !== drawn.outerHTML) {
      // In place (a tick, a deletion): the log announces additions only, not this message
      // again.
      node.className = drawn.className;
      node.replaceChildren(...drawn.childNodes);
    }
    const position = previous ? previous.nextSibling : list.firstChild;
    if (node !== position) {
      list.insertBefore(node, position);
    }
    previous = node;
  }
}

const SOURCE_LABELS = { CUSTOMER: "Customer", BOT: "Bot", AUTOMATION: "Automation", HUMAN: "Agent" };

function renderMessage(message) {
  const item = document.createElement("li");
  item.className = `message message--${message.source.toLowerCase()} message--${message.direction.toLowerCase()}`;
  item.dataset.messageId = message.id;
  item.dataset.status = message.status;

  // The source as a badge with its name: the bubble's colour repeats it, never replaces it.
  item.append(element("span", "source-badge", SOURCE_LABELS[message.source] ?? message.source));

  if (message.replyTo || message.replyToProviderId) {
    const quoted = element("blockquote", "reply-quote");
    quoted.textContent = message.replyTo
      ? `${SOURCE_LABELS[message.replyTo.source] ?? ""}: ${preview(message.replyTo)}`
      : "Replying to a message that is not stored";
    item.append(quoted);
  }

  item.append(renderContent(message));

  const footer = element("span", "message-meta");
  footer.append(element("time", "message-time", formatTime(message.sentAt)));
  if (message.direction === "OUTBOUND") {
    footer.append(renderTicks(message));
  }
  item.append(footer);
  if (message.status === "FAILED" && message.deliveryError) {
    const why = message.deliveryError.outcomeUnknown
      ? "It may or may not have reached the customer (the connection broke before WhatsApp answered)."
      : `${message.deliveryError.title ?? "Not delivered"}${message.deliveryError.code ? ` (${message.deliveryError.code})` : ""}`;
    item.append(element("p", "delivery-error", why));
  }
  return item;
}

const MEDIA_LABELS = {
  image: "Photo",
  video: "Video",
  audio: "Voice message",
  document: "Document",
  sticker: "Sticker",
  location: "Location",
  contacts: "Contact card",
  reaction: "Reaction",
  interactive: "Reply button",
  button: "Button",
  template: "Template",
};

function renderContent(message) {
  if (message.status === "DELETED") {
    return element("p", "message-body message-body--deleted", "This message was deleted");
  }
  if (message.type === "text") {
    return element("p", "message-body", message.body ?? "");
  }
  // Media and system messages: say what kind of message it is, then its caption or text.
  const known = MEDIA_LABELS[message.type];
  const body = element("p", known ? "message-body message-body--media" : "message-body message-body--system");
  body.append(element("span", "message-kind", known ?? `System message (${message.type})`));
  if (message.body) {
    body.append(document.createTextNode(` ${message.body}`));
  }
  return body;
}

const TICKS = {
  PENDING: ["", "Sending"],
  SENT: ["✓", "Sent"],
  DELIVERED: ["✓✓", "Delivered"],
  READ: ["✓✓", "Read"],
  PLAYED: ["✓✓", "Played"],
  FAILED: ["!", "Not delivered"],
  DELETED: ["", "Deleted"],
};

function renderTicks(message) {
  const [symbol, label] = TICKS[message.status] ?? ["", message.status.toLowerCase()];
  const ticks = element("span", "ticks");
  ticks.dataset.status = message.status;
  ticks.append(element("span", "ticks-symbol", symbol), element("span", "ticks-label", label));
  ticks.firstChild.setAttribute("aria-hidden", "true");
  return ticks;
}

// ---------------------------------------------------------------------------------------
// Replying: allowed inside the customer service window (24 h after the customer's latest
// message); outside it WhatsApp accepts only templates, so the box says why it is off.

let replyWindowTimer = null;

function renderReplyBox(thread) {
  const expiresAt = thread.serviceWindowExpiresAt ? new Date(thread.serviceWindowExpiresAt) : null;
  const open = expiresAt !== null && expiresAt > new Date();
  let reason = "";
  if (expiresAt === null) {
    reason = "You can reply once the customer has written: WhatsApp accepts only template messages before that.";
  } else if (!open) {
    reason = `The customer service window closed ${formatTime(thread.serviceWindowExpiresAt)}: WhatsApp accepts only template messages until the customer writes again.`;
  }
  $("reply-body").disabled = !open;
  $("reply-send").disabled = !open || Boolean(state.open?.sending);
  $("reply-disabled-reason").textContent = reason;
  $("reply-disabled-reason").hidden = open;
  clearTimeout(replyWindowTimer);
  if (open) {
    // Close the box when the window does, without waiting for another event.
    const closesIn = Math.min(expiresAt - new Date() + 50, 2 ** 31 - 1);
    replyWindowTimer = setTimeout(() => state.open && renderReplyBox(state.threads.get(state.open.id)), closesIn);
  }
}

async function sendReply() {
  const open = state.open;
  const body = $("reply-body").value.trim();
  if (!open || !body || $("reply-send").disabled) {
    return;
  }
  open.sending = true; // one reply at a time: live redraws of the box must not re-enable Send
  $("reply-send").disabled = true;
  $("reply-error").textContent = "";
  try {
    const data = await call(SEND_MESSAGE, { threadId: open.id, body });
    // Stored PENDING; the ticks follow messageStatusChanged from here. What was typed while
    // it was being sent stays.
    if (state.open === open && $("reply-body").value.trim() === body) {
      $("reply-body").value = "";
    }
    receiveMessage(data.sendMessage);
  } catch (error) {
    if (error.code === "OUTSIDE_SERVICE_WINDOW" && "serviceWindowExpiresAt" in error.extensions) {
      updateThread(open.id, { serviceWindowExpiresAt: error.extensions.serviceWindowExpiresAt });
    }
    $("reply-error").textContent = error instanceof GraphQLRequestError ? error.message : "The reply could not be sent: the server could not be reached.";
  } finally {
    open.sending = false;
    if (state.open === open) {
      renderReplyBox(state.threads.get(open.id));
    }
  }
}

// ---------------------------------------------------------------------------------------
// Live updates: one websocket, four subscriptions, no polling.

function connectLive() {
  state.live?.dispose(); // never two sockets: events of an old sign-in must not draw here
  state.live = liveClient(state.token, {
    onState: (connection) => {
      if (state.token === null) {
        return; // signed out: the socket closing now is ours
      }
      setConnection(connection);
      if (connection === "signed-out") {
        signOut("The server refused the token (expired or revoked): sign in again.");
      }
    },
    onConnected: (wasRetry) => {
      if (wasRetry) {
        scheduleRefetch();
      }
    },
  });
  subscribeLive(NEW_MESSAGE, ({ newMessage }) => {
    const { thread, ...message } = newMessage;
    const known = state.threads.get(thread.id);
    // unreadCountChanged owns the counts; a thread seen for the first time takes this one.
    rememberThread({ ...thread, unreadCount: known ? known.unreadCount : thread.unreadCount });
    receiveMessage(message);
  });
  subscribeLive(UNREAD_COUNT_CHANGED, ({ unreadCountChanged: event }) => {
    updateThread(event.threadId, { unreadCount: event.unreadCount });
    setTotalUnread(event.totalUnread);
  });
  subscribeLive(THREAD_MERGED, ({ threadMerged: event }) => {
    state.threads.delete(event.fromThreadId);
    if (state.open?.id === event.fromThreadId) {
      inBackground(() => openThread(event.intoThreadId));
    } else if (state.open?.id === event.intoThreadId) {
      // The open thread took the other one's messages (and its unread ones).
      inBackground(async () => {
        await loadMessages({ older: false });
        if (document.visibilityState === "visible") {
          await markRead(event.intoThreadId);
        }
      });
    }
    inBackground(() => loadThreads({ reset: true }));
  });
  subscribeLive(MESSAGE_STATUS_CHANGED, ({ messageStatusChanged: event }) => {
    const open = state.open?.id === event.threadId ? state.open : null;
    const message = open?.messages.get(event.messageId);
    if (message) {
      if (!replacesStatus(message.status, event.status)) {
        return; // an older tick that another server instance published late
      }
      message.status = event.status;
      message.deliveryError = event.deliveryError;
      renderThread();
    } else if (open) {
      // A reply's SENT can overtake sendMessage's own answer: keep it for when that arrives.
      open.earlyStatuses.set(event.messageId, event);
    }
    const thread = state.threads.get(event.threadId);
    if (thread?.lastMessage?.id === event.messageId) {
      thread.lastMessage = { ...thread.lastMessage, status: event.status };
    }
  });
}

// Delivery progress, as the server orders it: FAILED stands apart (see replacesStatus).
const STATUS_PROGRESS = { PENDING: 0, SENT: 1, DELIVERED: 2, READ: 3, PLAYED: 4 };

/**
 * Whether a tick replaces the status shown. Statuses only move forward; a failure replaces
 * anything short of PLAYED, and any tick after a failure replaces it (WhatsApp retried by
 * itself, or it settled a send whose answer was lost). With several server instances, ticks
 * of one message may arrive out of order: the furthest one wins, as on the server.
 */
function replacesStatus(current, proposed) {
  if (proposed === "FAILED") {
    return current !== "PLAYED";
  }
  if (current === "FAILED") {
    return proposed !== "PENDING";
  }
  if (!(current in STATUS_PROGRESS) || !(proposed in STATUS_PROGRESS)) {
    return true;
  }
  return STATUS_PROGRESS[proposed] > STATUS_PROGRESS[current];
}

function subscribeLive(query, onData) {
  const client = state.live;
  subscribe(client, query, {}, {
    onData: (data) => {
      if (state.live === client) {
        onData(data);
      }
    },
    onError: (errors) => {
      if (state.live !== client) {
        return;
      }
      if (errors.some((error) => error.extensions?.code === "RESYNC_REQUIRED")) {
        // This subscriber fell behind and missed events: subscribe again, then refetch.
        subscribeLive(query, onData);
        scheduleRefetch();
      } else {
        console.warn("subscription ended", query.trim().split(/\s+/)[1], errors);
      }
    },
  });
}

// The subscriptions a reconnection (or a resync) sends again are registered a moment after
// the socket is back: refetching then, once for all of them, leaves no gap between what the
// refetch read and what the subscriptions deliver.
const REFETCH_AFTER_MS = 300;
let refetchTimer = null;

function scheduleRefetch() {
  if (refetchTimer === null) {
    refetchTimer = setTimeout(() => {
      refetchTimer = null;
      if (state.token !== null) {
        inBackground(refetchMissed);
      }
    }, REFETCH_AFTER_MS);
  }
}

/** After the socket was down (or fell behind): refetch what it may have missed. */
async function refetchMissed() {
  await loadThreads({ reset: true });
  if (state.open) {
    await loadMessages({ older: false });
    if (document.visibilityState === "visible") {
      await markRead(state.open.id);
    }
  }
}

function receiveMessage(message) {
  const thread = state.threads.get(message.threadId);
  if (thread && (!thread.lastMessage || thread.lastMessage.sentAt <= message.sentAt)) {
    thread.lastMessage = message;
    if (!thread.lastMessageAt || thread.lastMessageAt < message.sentAt) {
      thread.lastMessageAt = message.sentAt;
    }
  }
  renderThreadList();
  const open = state.open;
  if (open?.id === message.threadId) {
    // A reply arrives PENDING (from sendMessage, and again from newMessage); keep the status
    // an event already moved it to.
    const known = open.messages.get(message.id) ?? open.earlyStatuses.get(message.id);
    open.earlyStatuses.delete(message.id);
    const movedOn = message.status === "PENDING" && known && known.status !== "PENDING";
    open.messages.set(message.id, movedOn ? { ...message, status: known.status, deliveryError: known.deliveryError } : message);
    renderThread();
    if (message.direction === "INBOUND" && document.visibilityState === "visible") {
      inBackground(() => markRead(open.id));
    }
  }
}

function rememberThread(thread) {
  const known = state.threads.get(thread.id);
  state.threads.set(thread.id, { ...known, ...thread });
  renderThreadList();
}

function updateThread(threadId, changes) {
  const thread = state.threads.get(threadId);
  if (!thread) {
    return;
  }
  Object.assign(thread, changes);
  renderThreadList();
  if (state.open?.id === threadId) {
    renderReplyBox(thread);
  }
}

const CONNECTION_LABELS = {
  offline: "Offline",
  connecting: "Connecting…",
  live: "Live",
  reconnecting: "Reconnecting…",
  "signed-out": "Signed out",
};

function setConnection(connection) {
  $("connection").dataset.state = connection;
  $("connection").textContent = CONNECTION_LABELS[connection] ?? connection;
}

// ---------------------------------------------------------------------------------------
// Small pieces.

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) {
    node.className = className;
  }
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

function threadName(thread) {
  return thread?.contactName || thread?.phone || `Thread ${thread?.id ?? ""}`;
}

function preview(message) {
  if (!message) {
    return "";
  }
  if (message.status === "DELETED") {
    return "This message was deleted";
  }
  if (message.type !== "text") {
    const kind = MEDIA_LABELS[message.type] ?? message.type;
    return message.body ? `${kind}: ${message.body}` : kind;
  }
  return message.body ?? "";
}

function formatTime(iso) {
  if (!iso) {
    return "";
  }
  const when = new Date(iso);
  const sameDay = when.toDateString() === new Date().toDateString();
  return sameDay
    ? when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : when.toLocaleDateString([], { day: "numeric", month: "short", year: "numeric" });
}

function isScrolledToNewest() {
  const scroller = $("message-scroller");
  return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 80;
}

function scrollToNewest() {
  const scroller = $("message-scroller");
  scroller.scrollTop = scroller.scrollHeight;
}

function wireEvents() {
  $("sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    inBackground(() => signIn($("token").value));
  });
  $("sign-out").addEventListener("click", () => signOut());
  document.addEventListener("visibilitychange", () => {
    // Messages that arrived while this tab was hidden were not read; now they are.
    if (document.visibilityState === "visible" && state.open && state.token !== null) {
      inBackground(() => markRead(state.open.id));
    }
  });
  $("load-more-threads").addEventListener("click", () => inBackground(() => loadThreads({ reset: false })));
  $("load-older").addEventListener("click", () => inBackground(loadOlderMessages));
  $("message-scroller").addEventListener("scroll", () => {
    if ($("message-scroller").scrollTop < 40) {
      inBackground(loadOlderMessages);
    }
  });
  $("back-to-list").addEventListener("click", () => {
    const threadId = state.open?.id;
    closeThreadView();
    document.querySelector(`[data-thread-id="${threadId}"]`)?.focus();
  });
  document.addEventListener("keydown", (event) => {
    // Escape goes back to the list, unless it would throw away a reply being written.
    const writing = event.target === $("reply-body") && $("reply-body").value.trim() !== "";
    if (event.key === "Escape" && state.open && !writing) {
      $("back-to-list").click();
    }
  });
  $("reply-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sendReply();
  });
  $("reply-body").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      sendReply();
    }
  });
}

start();
