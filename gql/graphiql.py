"""GraphiQL served offline: strawberry's page, its unpkg.com files replaced by the pinned copies
the server serves itself under /static/vendor/ (gql/static/vendor/MANIFEST.md).

Without this, a browser with no internet access (or behind a firewall) stays on a white
"Loading..." page with `Cookies is not defined` in its console (issue 17). The page's
`integrity=` hashes are kept: the browser still checks each file is the one strawberry pinned.
"""

import re

from strawberry.http.ides import get_graphql_ide_html

from gql.browser import VENDOR_DIR

UNPKG = "https://unpkg.com/"
VENDOR_PATH = "/static/vendor/"


class GraphiQLNotVendored(RuntimeError):
    """strawberry's page loads a file that gql/static/vendor/ does not hold (a strawberry
    upgrade changed GraphiQL's pins): re-vendor with gql/static/vendor/fetch.sh."""


def offline_graphiql_html() -> str:
    """strawberry's GraphiQL page, every asset loaded from this server."""
    html = get_graphql_ide_html(graphql_ide="graphiql").replace(UNPKG, VENDOR_PATH)
    for path in vendored_assets(html):
        if not (VENDOR_DIR / path.removeprefix(VENDOR_PATH)).is_file():
            raise GraphiQLNotVendored(f"GraphiQL loads {path}, which is not vendored")
    return html


def vendored_assets(html: str) -> list[str]:
    """The /static/vendor/ paths a page refers to, in order."""
    return re.findall(rf'(?:src|href)="({VENDOR_PATH}[^"]+)"', html)
