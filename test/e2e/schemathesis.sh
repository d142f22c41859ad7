#!/usr/bin/env bash
# Fuzzes the two running services against their OpenAPI documents (docs/openapi/, served at
# /openapi.json) with schemathesis, from PyPI (installed with pip when missing).
#
#   test/e2e/schemathesis.sh GATEWAY_URL DATA_STORAGE_URL
#
# Checks: no 5xx but the documented 503s (not_a_server_error, see schemathesis.toml), and every
# response as documented: its status (status_code_conformance), its content type
# (content_type_conformance) and its body (response_schema_conformance). Generated data is
# valid and invalid (`--mode all`). SCHEMATHESIS_MAX_EXAMPLES (default 100) bounds the cases
# per operation and phase. Reports go to target/e2e/schemathesis/.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
gateway=${1:?usage: $0 GATEWAY_URL DATA_STORAGE_URL}
data_storage=${2:?usage: $0 GATEWAY_URL DATA_STORAGE_URL}
max_examples=${SCHEMATHESIS_MAX_EXAMPLES:-100}
reports=${SCHEMATHESIS_REPORTS:-$(cd "$here/../.." && pwd)/target/e2e/schemathesis}

if ! python3 -c 'import schemathesis' 2>/dev/null; then
  python3 -m pip install -q 'schemathesis>=4.30,<5'
fi
mkdir -p "$reports"

failed=0
for service in "gateway ${gateway%/}" "data-storage ${data_storage%/}"; do
  name=${service%% *}
  url=${service#* }
  echo "==> schemathesis: $name at $url"
  # From the reports directory, where schemathesis keeps its cache (.schemathesis/).
  if ! (cd "$reports" && python3 -m schemathesis.cli --config-file "$here/schemathesis.toml" run "$url/openapi.json" \
    --url "$url" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --mode all \
    --max-examples "$max_examples" \
    --workers 2 \
    --request-timeout 20 \
    --generation-database none \
    --report junit --report-junit-path "$reports/$name.junit.xml" \
    --no-color); then
    failed=1
  fi
done
if [ "$failed" != 0 ]; then
  echo "schemathesis found responses that do not match the documents (above)" >&2
  exit 1
fi
echo "schemathesis: both services answer as documented"
