"""The rules of wa-inbox: threading, canonical keys, dedupe, read tracking. No GraphQL, no HTTP."""
