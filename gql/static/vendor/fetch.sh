#!/usr/bin/env bash
# Re-vendor the browser files the server serves under /static/vendor/ (GraphiQL's and the
# inbox page's), from the npm registry, and rewrite MANIFEST.md. Run from this folder:
#   ./fetch.sh        (needs npm; nothing here runs at build or serve time)
# Each file keeps its unpkg path (<package>@<version>/<path>), so gql/graphiql.py can point
# strawberry's GraphiQL page here by replacing the host alone. Bump a version here and in
# strawberry's page together: its integrity= hashes must match these files.
set -euo pipefail
cd "$(dirname "$0")"
# package@version  file in the package...
FILES=(
  "react@18.2.0 umd/react.production.min.js LICENSE"
  "react-dom@18.2.0 umd/react-dom.production.min.js LICENSE"
  "js-cookie@3.0.5 dist/js.cookie.min.js LICENSE"
  "graphiql@3.8.3 graphiql.min.js graphiql.min.css LICENSE"
  "@graphiql/plugin-explorer@1.0.2 dist/index.umd.js dist/style.css"
  "graphql-ws@6.4.2 umd/graphql-ws.min.js LICENSE.md"
)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
{
  echo "# Vendored browser files"
  echo
  echo "Served by the server under \`/static/vendor/\` so that GraphiQL (\`/graphql\`) and the inbox"
  echo "page (\`/\`) work without internet access. Written by \`./fetch.sh\` from the npm registry;"
  echo "never edited by hand."
  echo
  echo "| file | package | licence | source | sha256 |"
  echo "|---|---|---|---|---|"
} > MANIFEST.md
for entry in "${FILES[@]}"; do
  read -r spec paths <<<"$entry"
  tarball=$(cd "$work" && npm pack "$spec" --silent)
  mkdir -p "$work/$spec"
  tar xzf "$work/$tarball" -C "$work/$spec"
  licence=$(node -p "require('$work/$spec/package/package.json').license")
  url=$(npm view "$spec" dist.tarball)
  for path in $paths; do
    mkdir -p "$spec/$(dirname "$path")"
    cp "$work/$spec/package/$path" "$spec/$path"
    sum=$(sha256sum "$spec/$path" | cut -d' ' -f1)
    echo "| \`$spec/$path\` | \`$spec\` | $licence | $url | \`$sum\` |" >> MANIFEST.md
  done
done
# @graphiql/plugin-explorer ships no licence file: it is MIT, from the same monorepo
# (graphql/graphiql) as graphiql, whose LICENSE is that licence.
cp "graphiql@3.8.3/LICENSE" "@graphiql/plugin-explorer@1.0.2/LICENSE"
echo >> MANIFEST.md
echo "\`@graphiql/plugin-explorer\` ships no licence file; it is MIT, from graphiql's monorepo" >> MANIFEST.md
echo "(github.com/graphql/graphiql), so its \`LICENSE\` is a copy of graphiql's." >> MANIFEST.md
