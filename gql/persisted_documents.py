"""Persisted documents: a request names its GraphQL document by hash instead of sending it.

- Apollo's automatic persisted queries (APQ), as Apollo Server 4 answers them
  (`packages/server/src/requestPipeline.ts`): `extensions.persistedQuery = {version: 1,
  sha256Hash}`; an unknown hash without the text is `PersistedQueryNotFound`
  (`PERSISTED_QUERY_NOT_FOUND`, HTTP 200, so Apollo Client and urql resend it with the text);
  hash and text are checked against each other, the text is learned and run. Learned
  documents live in a bounded LRU of this process: another instance learns them on its own,
  at the cost of one resend per client.
- `documentId`, the GraphQL-over-HTTP persisted documents appendix: `sha256:<hex>` or a
  custom id, looked up the same way.
- An allow-list (`TRUSTED_DOCUMENTS`): GraphQL codegen's `persisted-documents.json` (hash ->
  document) or Apollo's `persisted-query-manifest.json`. When it is on, only its documents
  run (by id or by their exact text) and nothing is learned.
"""

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from graphql import GraphQLError, parse

PERSISTED_QUERY_NOT_FOUND = "PERSISTED_QUERY_NOT_FOUND"
PERSISTED_QUERY_NOT_ALLOWED = "PERSISTED_QUERY_NOT_ALLOWED"
BAD_REQUEST = "BAD_REQUEST"

# Apollo Client and urql recognise the error by this message or by its code.
NOT_FOUND_MESSAGE = "PersistedQueryNotFound"

# What the APQ store may hold at most; a document never exceeds MAX_BODY_BYTES either, since
# it arrived in one request.
MAX_LEARNED_DOCUMENTS = 2_000
MAX_LEARNED_BYTES = 16 * 1024 * 1024

_SHA256_PREFIX = "sha256:"


class DocumentRefused(Exception):
    """The request's document cannot be run; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


class ManifestError(ValueError):
    """A trusted-documents manifest the server cannot start with."""


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def names_persisted_document(extensions: Mapping[str, Any] | None, document_id: Any) -> bool:
    """Whether a request names its document by id (it may then leave `query` out)."""
    return document_id is not None or (extensions or {}).get("persistedQuery") is not None


@dataclass(frozen=True)
class TrustedDocuments:
    """The allow-list: document id -> text, read once from a manifest at start-up."""

    source: Path
    by_id: Mapping[str, str]
    texts: frozenset[str]

    @classmethod
    def load(cls, path: Path) -> "TrustedDocuments":
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ManifestError("the file does not exist") from None
        except (OSError, UnicodeDecodeError) as error:
            raise ManifestError(f"the file cannot be read ({error})") from None
        except ValueError as error:
            raise ManifestError(f"the file is not JSON ({error})") from None
        except RecursionError:
            raise ManifestError("the file's JSON is nested too deeply") from None
        documents = _manifest_documents(raw)
        if not documents:
            raise ManifestError("it lists no documents, so nothing could run")
        for document_id, text in documents.items():
            try:
                parse(text)
            except GraphQLError as error:
                raise ManifestError(
                    f"document {document_id!r} is not GraphQL ({error.message})"
                ) from None
        return cls(
            source=path,
            by_id=MappingProxyType(documents),
            texts=frozenset(documents.values()),
        )


def _manifest_documents(raw: Any) -> dict[str, str]:
    """`{id: text}` of a codegen `persisted-documents.json` or an Apollo manifest."""
    if isinstance(raw, dict) and raw.get("format") == "apollo-persisted-query-manifest":
        if raw.get("version") != 1:
            raise ManifestError(
                f"apollo-persisted-query-manifest version {raw.get('version')!r} is not "
                "supported (version 1 is)"
            )
        operations = raw.get("operations")
        if not isinstance(operations, list):
            raise ManifestError("an apollo-persisted-query-manifest needs an `operations` list")
        documents: dict[str, str] = {}
        for index, operation in enumerate(operations):
            if not (
                isinstance(operation, dict)
                and isinstance(operation.get("id"), str)
                and operation["id"]
                and isinstance(operation.get("body"), str)
            ):
                raise ManifestError(f"operations[{index}] needs a string `id` and `body`")
            documents[_normalized_id(operation["id"])] = operation["body"]
        return documents
    if not isinstance(raw, dict):
        raise ManifestError(
            "expected a JSON object mapping document hashes to documents (GraphQL codegen's "
            "persisted-documents.json) or an apollo-persisted-query-manifest"
        )
    for document_id, text in raw.items():
        if not document_id or not isinstance(text, str):
            raise ManifestError(
                f"entry {document_id!r} is not a document hash mapped to a document's text "
                "(is this the client's operation-name -> hash file instead?)"
            )
    return {_normalized_id(document_id): text for document_id, text in raw.items()}


def _normalized_id(document_id: str) -> str:
    """A SHA-256 id as bare hex, however it is written (`sha256:` prefixed or not)."""
    if document_id.startswith(_SHA256_PREFIX):
        return document_id[len(_SHA256_PREFIX) :]
    return document_id


class LearnedDocuments:
    """The APQ store: hash -> text, least recently used first out, bounded in count and bytes."""

    def __init__(self, max_documents: int, max_bytes: int) -> None:
        self.max_documents = max_documents
        self.max_bytes = max_bytes
        self._documents: OrderedDict[str, str] = OrderedDict()
        self._bytes = 0

    def get(self, document_hash: str) -> str | None:
        text = self._documents.get(document_hash)
        if text is not None:
            self._documents.move_to_end(document_hash)
        return text

    def learn(self, document_hash: str, text: str) -> None:
        size = len(text.encode())
        if size > self.max_bytes or document_hash in self._documents:
            return
        self._documents[document_hash] = text
        self._bytes += size
        while len(self._documents) > self.max_documents or self._bytes > self.max_bytes:
            _, evicted = self._documents.popitem(last=False)
            self._bytes -= len(evicted.encode())

    def __len__(self) -> int:
        return len(self._documents)


class PersistedDocuments:
    """Turns what a request says about its document into the text to run, or refuses it."""

    def __init__(
        self,
        trusted: TrustedDocuments | None = None,
        *,
        accepts: Callable[[str], bool] = lambda text: True,
        max_documents: int = MAX_LEARNED_DOCUMENTS,
        max_bytes: int = MAX_LEARNED_BYTES,
    ) -> None:
        """`accepts(text)`: whether a sent document may be learned (Apollo Server learns only
        documents that parse and validate)."""
        self.trusted = trusted
        self.accepts = accepts
        self.learned = LearnedDocuments(max_documents, max_bytes)

    def document_for(
        self,
        query: str | None,
        extensions: Mapping[str, Any] | None,
        document_id: str | None,
    ) -> str:
        """The text of the document the request names (by id, by text, or both); a blank
        `query` counts as none (graphql-ws clients must send one)."""
        query = query if query and query.strip() else None
        sha256_hash = _apq_hash(extensions)
        if sha256_hash is not None and document_id is not None:
            raise DocumentRefused(
                400, "send `documentId` or `extensions.persistedQuery`, not both", BAD_REQUEST
            )
        if document_id is not None:
            if query:
                raise DocumentRefused(400, "send `documentId` or `query`, not both", BAD_REQUEST)
            if not document_id:
                raise DocumentRefused(400, "`documentId` must not be empty", BAD_REQUEST)
            return self._by_id(_normalized_id(document_id))
        if sha256_hash is None:
            if not query:
                raise DocumentRefused(400, "`query` must be a non-empty string", BAD_REQUEST)
            return self._by_text(query)
        if not query:
            return self._by_id(sha256_hash)
        # The hash must be the text's own: otherwise a client could file any document under a
        # hash that others send (Apollo's "hash hijacking").
        if not _encodable(query):
            # JSON lets a lone surrogate through; it has no UTF-8 bytes to hash.
            raise DocumentRefused(400, "`query` is not valid Unicode text", BAD_REQUEST)
        if sha256_hex(query) != sha256_hash:
            raise DocumentRefused(400, "provided sha does not match query", BAD_REQUEST)
        if self.trusted is not None:
            # A listed text is trusted whatever the manifest's ids are (sha1, custom).
            return query if query in self.trusted.texts else self._by_id(sha256_hash)
        if self.accepts(query):
            self.learned.learn(sha256_hash, query)
        return query

    def _by_id(self, document_id: str) -> str:
        if self.trusted is not None:
            text = self.trusted.by_id.get(document_id)
            if text is None:
                raise _not_allowed()
            return text
        text = self.learned.get(document_id)
        if text is None:
            # Apollo Server answers 200: the client resends with the text at once, and error
            # handling for a 4xx could hide this body from the retry logic.
            raise DocumentRefused(200, NOT_FOUND_MESSAGE, PERSISTED_QUERY_NOT_FOUND)
        return text

    def _by_text(self, query: str) -> str:
        if self.trusted is not None and query not in self.trusted.texts:
            raise _not_allowed()
        return query


def _not_allowed() -> DocumentRefused:
    return DocumentRefused(
        403,
        "only the trusted documents of TRUSTED_DOCUMENTS run on this server: send a listed "
        "document's hash",
        PERSISTED_QUERY_NOT_ALLOWED,
    )


def _apq_hash(extensions: Mapping[str, Any] | None) -> str | None:
    """`extensions.persistedQuery.sha256Hash`, checked as Apollo Server checks it."""
    persisted = (extensions or {}).get("persistedQuery")
    if persisted is None:
        return None
    if not isinstance(persisted, dict):
        raise DocumentRefused(
            400, "`extensions.persistedQuery` must be an object {version, sha256Hash}", BAD_REQUEST
        )
    version = persisted.get("version")
    if isinstance(version, bool) or version != 1:  # JSON's true is not 1
        raise DocumentRefused(400, "Unsupported persisted query version", BAD_REQUEST)
    sha256_hash = persisted.get("sha256Hash")
    if not isinstance(sha256_hash, str) or not sha256_hash:
        raise DocumentRefused(
            400, "`extensions.persistedQuery.sha256Hash` must be a non-empty string", BAD_REQUEST
        )
    return sha256_hash
