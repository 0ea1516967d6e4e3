"""GraphiQL served offline: strawberry's page, its unpkg.com files replaced by the pinned copies
the server serves itself under /static/vendor/ (gql/static/vendor/MANIFEST.md).

Without this, a browser with no internet access (or behind a firewall) stays on a white
"Loading..." page with `Cookies is not defined` in its console (issue 17). The page's
`integrity=` hashes are kept: the browser still checks each file is the one strawberry pinned.
"""

import logging
import re

from strawberry.http.ides import get_graphql_ide_html

from gql.browser import VENDOR_DIR

log = logging.getLogger("wa_inbox.graphiql")

UNPKG_FILE = re.compile(r'(?<=")https://unpkg\.com/([^"]+)(?=")')
VENDOR_PATH = "/static/vendor/"


def offline_graphiql_html() -> str:
    """strawberry's GraphiQL page, every vendored asset loaded from this server.

    A file that is not vendored (a strawberry upgrade moved GraphiQL's pins) stays on unpkg
    and is logged: GraphiQL then needs internet access again until gql/static/vendor/fetch.sh
    is run with the new versions (tests/test_browser_pages.py fails meanwhile).
    """

    def local(found: re.Match[str]) -> str:
        path = found.group(1)
        if (VENDOR_DIR / path).is_file():
            return VENDOR_PATH + path
        log.warning(
            "GraphiQL loads %s, which gql/static/vendor/ does not hold: it is fetched from "
            "unpkg.com (re-vendor with gql/static/vendor/fetch.sh)",
            path,
        )
        return found.group(0)

    return UNPKG_FILE.sub(local, get_graphql_ide_html(graphql_ide="graphiql"))


def vendored_assets(html: str) -> list[str]:
    """The /static/vendor/ paths a page refers to, in order."""
    return re.findall(rf'(?:src|href)="({VENDOR_PATH}[^"]+)"', html)
